"""Server and worker subprocesses: start, pin to a CPU, wait until they answer, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict a process to `cpus` (no-op where unsupported or when cpus is None)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cpus)


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cpus: set[int] | None = None
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.popen is None:
            self.log_path.write_bytes(b"")  # a fresh log per bench run
        with self.log_path.open("ab") as log:  # a restarted process appends
            self.popen = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is the bench's to handle
            )
        pin(self.popen.pid, self.cpus)
        return self

    def wait_http(self, path: str, timeout: float = 60.0) -> None:
        """Poll http://HOST:port/path until it answers 200, or fail with the log's tail."""
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}{path}"
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready at {url} ({last}):\n{self.tail()}")

    def wait_tcp(self, timeout: float = 60.0) -> None:
        """Poll HOST:port until it accepts a connection (servers with no plain GET route)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                socket.create_connection((HOST, self.port or 0), timeout=2).close()
                return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not listening on {HOST}:{self.port} ({last}):\n{self.tail()}"
        )

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (uvicorn and arq shut down gracefully on it), SIGKILL after `grace`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
