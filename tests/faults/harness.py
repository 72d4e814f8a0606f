"""The fault suite's deployment: its own Postgres and Redis (which the tests stop and start), API
and worker processes (which the tests SIGKILL), all as production runs them.

- `Cluster`: an EmbeddedPostgres and an EmbeddedRedis under one temporary directory, never the
  machine's shared servers. Postgres restarts on its data; Redis restarts empty (its files are
  removed, as a Redis without persistence, or a failed-over one, comes back).
- `Proc`: one `agentry api` or `agentry worker` process: start, SIGKILL, SIGTERM, its log.
- `Deployment`: the cluster, the environment every process gets (short recovery intervals), the
  API and worker processes, and the test's own database access (`Db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from backend.core.devservices import EmbeddedPostgres, EmbeddedRedis

SUPERUSER = ("faults-admin@example.com", "faults-admin-password")
QUEUE_NAME = "agentry:faults"
# Every process's recovery intervals: a dead worker is noticed within seconds, not minutes.
RECOVERY = {
    "WORKER_HEARTBEAT_SECONDS": "1",
    "WORKER_TTL_SECONDS": "3",
    "RUN_SWEEP_INTERVAL_SECONDS": "1",
    "RUN_REAP_GRACE_SECONDS": "2",
    "RUN_RETRY_BASE_SECONDS": "0.1",
    "RUN_RETRY_MAX_SECONDS": "1",
    # How long a worker's claim on a job it took lasts unrenewed: after a SIGKILL another
    # worker takes the job again within this (not yet read by every version of Settings:
    # unknown variables are ignored).
    "WORKER_LEASE_SECONDS": "3",
}
START_TIMEOUT = 60.0


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float, every: float = 0.1, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what or 'condition'} not met within {timeout:g} s (last: {value!r})"
            )
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = EmbeddedPostgres(root, database="agentry")
        self.redis = EmbeddedRedis(root)
        self._redis_port: int | None = None

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()

    def stop(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def dsn(self) -> str:
        """For the test's own asyncpg connections."""
        return self.postgres.dsn_for("agentry", driver="postgresql")

    def stop_redis(self) -> None:
        self._redis_port = self.redis.port
        self.redis.stop()

    def start_redis_empty(self) -> None:
        """Start Redis again on its port with none of its data (the queue, the workers'
        liveness and in-progress keys, the event streams: all gone)."""
        for name in ("appendonlydir", "appendonly.aof", "dump.rdb"):
            path = self.redis.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.redis.start()
        assert self.redis.port == self._redis_port, "Redis came back on another port"

    def ensure_started(self) -> None:
        """After a scenario that failed with a server down: start it again."""
        if not self.postgres.running:
            self.postgres.start()
        if not self.redis.running:
            self.start_redis_empty()


@dataclass
class Proc:
    """One API or worker process; its output goes to `log` (appended across restarts)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every pid it had, for the report

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as out:
            out.write(f"\n===== {self.name} starting at {time.strftime('%X')} =====\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pids.append(self.popen.pid)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self, timeout: float = 20) -> None:
        """SIGTERM (a worker requeues its runs), SIGKILL if it does not exit in time."""
        if not self.alive:
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


class Db:
    """The test's own connections: a fresh one per query, so a Postgres restart is harmless."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def value(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    @contextlib.asynccontextmanager
    async def row_lock(self, table: str, row_id: Any, mode: str) -> AsyncIterator[None]:
        """Hold `SELECT … FOR <mode>` on one row until the block ends (then roll back)."""
        assert table in {"agents", "projects"}
        assert mode in {"UPDATE", "NO KEY UPDATE"}
        conn = await asyncpg.connect(self.dsn)
        try:
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"SELECT FROM {table} WHERE id = $1 FOR {mode}", row_id)
            try:
                yield
            finally:
                await tr.rollback()
        finally:
            await conn.close()

    async def waiting_on_locks(self, application_name: str) -> int:
        """Backends of that application (agentry: API, agentry-worker: a worker's pipeline)
        blocked on a lock now."""
        return int(
            await self.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            )
        )


class Deployment:
    def __init__(self, root: Path, llm_url: str, *, apis: int = 2, workers: int = 2) -> None:
        self.root = root
        self.cluster = Cluster(root)
        self.llm_url = llm_url
        self.db: Db | None = None
        self.apis: list[Proc] = []
        self.workers: list[Proc] = []
        self._counts = (apis, workers)
        self.env: dict[str, str] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        self.db = Db(self.cluster.dsn)
        self.env = self._environment()
        for command in ("migrate", "create-superuser"):
            subprocess.run(
                [sys.executable, "-m", "backend.cli", command],
                cwd=self.root,
                env=self.env,
                check=True,
                capture_output=True,
                timeout=120,
            )
        apis, workers = self._counts
        self.apis = [self._proc(f"api{n + 1}", "api", free_port()) for n in range(apis)]
        self.workers = [self._proc(f"worker{n + 1}", "worker") for n in range(workers)]

    def stop(self) -> None:
        for proc in [*self.apis, *self.workers]:
            proc.terminate(timeout=10)
        self.cluster.stop()

    def _environment(self) -> dict[str, str]:
        # Nothing from the caller's Agentry settings (or a .env: the processes run in root).
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PG"))}
        return {
            **keep,
            "ENVIRONMENT": "production",
            "DATABASE_URL": self.cluster.database_url,
            "REDIS_URL": self.cluster.redis.url,
            "SECRET_KEY": "faults-secret-key-" + "k" * 40,
            "FIRST_SUPERUSER_EMAIL": SUPERUSER[0],
            "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
            "QUEUE_NAME": QUEUE_NAME,
            "OPENAI_API_KEY": "sk-faults-stub",
            "OPENAI_BASE_URL": self.llm_url,
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "console",
            "DB_POOL_SIZE": "5",
            "DB_MAX_OVERFLOW": "5",
            "WORKER_MAX_JOBS": "20",
            # Limiting stays on (its Redis path is part of the outage), never in the way.
            "RATE_LIMIT_MULTIPLIER": "1000",
            **RECOVERY,
        }

    def _proc(self, name: str, command: str, port: int | None = None) -> Proc:
        env = dict(self.env)
        if port is not None:
            env.update(HOST="127.0.0.1", PORT=str(port))
        argv = [sys.executable, "-m", "backend.cli", command]
        return Proc(name, argv, env, self.root, self.root / f"{name}.log", port=port)

    async def ensure_running(self) -> None:
        """Start every process that is not running (all at first; after a test, the ones it
        killed), and wait until each is ready."""
        await asyncio.to_thread(self.cluster.ensure_started)
        started = [p for p in [*self.apis, *self.workers] if not p.alive]
        for proc in started:
            proc.start()
        # Every API, not only the new ones: an API whose pool lost its connections to a
        # Postgres restart answers its first request 503 (and heals); let /ready take that.
        for proc in [*self.apis, *(p for p in started if p in self.workers)]:
            await self.wait_ready(proc)

    async def wait_ready(self, proc: Proc) -> None:
        if proc in self.apis:
            await eventually(
                lambda: self._api_ready(proc), timeout=START_TIMEOUT, what=f"{proc.name} ready"
            )
        else:
            await eventually(
                lambda: self._worker_ready(proc),
                timeout=START_TIMEOUT,
                what=f"{proc.name} started",
            )

    async def _api_ready(self, proc: Proc) -> bool:
        assert proc.alive, f"{proc.name} exited:\n{proc.tail()}"
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(f"http://127.0.0.1:{proc.port}/ready")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def _worker_ready(self, proc: Proc) -> bool:
        assert proc.alive, f"{proc.name} exited:\n{proc.tail()}"
        # This process's own start line (the log holds every earlier one too).
        started = proc.text().rsplit(f"===== {proc.name} starting", 1)[-1]
        return "worker_started" in started

    def api_url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.apis[n].port}"

    def report(self) -> str:
        """Every process's state and log tail: what a failed scenario prints."""
        parts = []
        for proc in [*self.apis, *self.workers]:
            state = "alive" if proc.alive else f"exited {proc.exit_code()}"
            parts.append(f"----- {proc.name} (pids {proc.pids}, {state}) -----\n{proc.tail()}")
        return "\n".join(parts)
