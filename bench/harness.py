"""What every section shares: config, services, a DB engine, server processes, CPU placement."""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import loadgen
from bench.config import SECRET_KEY, BenchConfig, agentry_env
from bench.procs import HOST, Proc, cpu_count, free_port, pin, python_module
from bench.routes import Available
from bench.services import Services
from bench.world import Owner, create_owner

SERVER_CPU = 0
CLIENT_CPU = 1


@dataclass
class Harness:
    cfg: BenchConfig
    services: Services
    available: Available
    out_dir: Path
    engine: AsyncEngine = field(init=False)
    owner: Owner = field(init=False)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def __aenter__(self) -> Harness:
        self.engine = create_async_engine(self.services.database_url, pool_size=5)
        self.stack.push_async_callback(self.engine.dispose)
        self.owner = await create_owner(self.engine, secret=SECRET_KEY)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def flush_redis(self) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(self.services.redis_url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    # -- CPU placement: servers on one core, the load generator on the other

    @property
    def pinning(self) -> bool:
        return self.cfg.pin and cpu_count() >= 2 and hasattr(os, "sched_setaffinity")

    def server_cpus(self) -> set[int] | None:
        return {sorted(os.sched_getaffinity(0))[SERVER_CPU]} if self.pinning else None

    def client_cpus(self) -> set[int] | None:
        return {sorted(os.sched_getaffinity(0))[CLIENT_CPU]} if self.pinning else None

    # -- processes

    async def start_server(
        self, name: str, kind: str, *, env: dict[str, str] | None = None, ready: str
    ) -> Proc:
        port = free_port()
        proc = Proc(
            name=name,
            args=python_module("bench.serve", kind, str(port)),
            env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
            log_path=self.out_dir / "logs" / f"{name}.log",
            cpus=self.server_cpus(),
            port=port,
        )
        proc.start()
        try:
            await asyncio.to_thread(proc.wait_http, ready)
        except BaseException:
            proc.stop()
            raise
        return proc

    async def start_agentry(self, name: str, **settings: object) -> Proc:
        env = agentry_env(self.services.database_url, self.services.redis_url, **settings)
        return await self.start_server(name, "agentry", env=env, ready="/ready")

    # -- load

    async def load(
        self,
        proc: Proc,
        requests: list[bytes],
        *,
        connections: int | None = None,
        seconds: float | None = None,
        warmup: float | None = None,
    ) -> loadgen.Result:
        """Closed-loop load from the client core; the bench process is pinned only meanwhile."""
        previous = os.sched_getaffinity(0) if self.pinning else None
        pin(0, self.client_cpus())
        server = psutil.Process(proc.popen.pid)  # type: ignore[union-attr]
        before = server.cpu_times()
        try:
            result = await loadgen.measure(
                HOST,
                proc.port,  # type: ignore[arg-type]
                requests,
                seconds=seconds or self.cfg.seconds,
                warmup=self.cfg.warmup if warmup is None else warmup,
                connections=connections or self.cfg.connections,
            )
        finally:
            pin(0, previous)
        after = server.cpu_times()
        # CPU the server process spent per response (warm-up included): steadier than req/s
        # on a shared machine, and blind to Postgres' and Redis' share.
        result.server_cpu_s = (after.user + after.system) - (before.user + before.system)
        return result

    def request(
        self, proc: Proc, method: str, path: str, body: Any = None, *, auth: bool = True
    ) -> bytes:
        headers = dict(self.owner.headers) if auth else {}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body).encode()
        return loadgen.build_request(
            method, path, host=f"{HOST}:{proc.port}", headers=headers, body=payload
        )

    async def call(
        self, proc: Proc, method: str, path: str, body: Any = None, *, timeout: float = 30
    ) -> httpx.Response:
        """One plain request (probes, sequential submissions)."""
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{proc.port}", timeout=timeout) as c:
            return await c.request(method, path, json=body, headers=self.owner.headers)
