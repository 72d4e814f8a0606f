"""A live Agentry (`agentry dev`: API + worker, real Postgres and Redis) in a subprocess, and
`agentryctl` run as a user runs it, in subprocesses too."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import servers

BIN = Path(sys.executable).parent
# Which agentryctl to test: the project venv's, or e.g. one pip-installed alone elsewhere.
AGENTRYCTL = os.environ.get("AGENTRYCTL_BIN") or str(BIN / "agentryctl")
EMAIL, PASSWORD = "root@example.com", "cli-tests-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Live:
    url: str
    api: str  # url + /api/v1
    token: str  # the superuser's access token
    api_key: str  # the superuser's API key (all scopes)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: object, **kw: object) -> dict:
        r = httpx.post(self.api + path, json=body, headers=self.headers(), **kw)  # type: ignore[arg-type]
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, path: str, **kw: object) -> dict:
        r = httpx.get(self.api + path, headers=self.headers(), **kw)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        return r.json()

    def project(self, **budget: object) -> dict:
        slug = f"p-{uuid.uuid4().hex[:10]}"
        return self.post("/projects", {"name": slug, "slug": slug, "budget": budget or None})

    def agent_type(self, **fields: object) -> dict:
        """A new `fake` type (API.md "Agent types": `config.script`, tools, mcp_servers)."""
        slug = f"t-{uuid.uuid4().hex[:10]}"
        body = {"name": slug, "slug": slug, "provider": "fake", "model": "fake-echo", **fields}
        return self.post("/agent-types", body)

    def demo_mcp_url(self) -> str:
        """The demo MCP server `agentry dev` serves (its banner's `MCP demo:`), as the seeded
        tool-demo type holds it."""
        types = self.get("/agent-types", params={"limit": 100})["data"]
        demo = next(t for t in types if t["slug"] == "tool-demo")
        return demo["mcp_servers"][0]["url"]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agentry dev exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"agentry dev did not become ready:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def live(server_urls: servers.ServerUrls) -> Iterator[Live]:
    name = f"agentry_cli_{os.getpid()}_{secrets.token_hex(3)}"
    database = servers.create_database(server_urls.postgres, name)
    servers.migrate(database, "head")
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="agentry-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRY_", "TEST_"))}
    env.update(
        DATABASE_URL=database,
        REDIS_URL=server_urls.redis,
        HOST="127.0.0.1",
        PORT=str(port),
        FIRST_SUPERUSER_EMAIL=EMAIL,
        FIRST_SUPERUSER_PASSWORD=PASSWORD,
        QUEUE_NAME=f"agentry:cli-test:{secrets.token_hex(4)}",
        SECRET_KEY="cli-tests-secret-" + "x" * 32,
        DATA_DIR=str(tmp / "data"),
        LOG_LEVEL="WARNING",
        RATE_LIMIT_MULTIPLIER="100",
    )
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "agentry"), "dev"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        r = httpx.post(url + "/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
        token = r.json()["access_token"]
        key = httpx.post(
            url + "/api/v1/api-keys",
            json={"name": "cli-tests"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()["key"]
        yield Live(url, url + "/api/v1", token, key)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        servers.drop_database(server_urls.postgres, name)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def ctl(live: Live, config_home: Path):
    """Run agentryctl against the live server with the superuser's API key (unless the
    caller's env says otherwise); a retry budget of 5 s keeps failure tests short."""

    def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        full = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRY_")}
        full.update(
            AGENTRY_URL=live.url,
            AGENTRY_API_KEY=live.api_key,
            AGENTRY_RETRY_SECONDS="5",
            XDG_CONFIG_HOME=str(config_home),
        )
        full.update(env or {})
        full = {k: v for k, v in full.items() if v is not None}
        done = subprocess.run(
            [AGENTRYCTL, *args],
            env=full,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=90,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run
