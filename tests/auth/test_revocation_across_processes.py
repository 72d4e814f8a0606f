"""API.md: a deactivated user, a revoked API key or a removed member is refused on the very
next request — by every API process, not only the one that took the change.

Two real `agentry api` processes on the test database and Redis: each change goes through one,
and the very next request, to the other, is refused. Both served the credential just before,
so whatever a process could remember of it (a cache of credentials or roles) was there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.config import Settings
from backend.projects.models import Role
from tests.support import servers
from tests.support.auth import Auth

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "agentry"), "api"],
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agentry api exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"agentry api did not become ready:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def apis(
    database_url: str, server_urls: servers.ServerUrls, settings: Settings
) -> Iterator[tuple[str, str]]:
    """The base URLs of two API processes sharing the test database and Redis."""
    tmp = Path(tempfile.mkdtemp(prefix="agentry-two-apis-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRY_", "TEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=server_urls.redis,
        HOST="127.0.0.1",
        SECRET_KEY=settings.secret_key,
        QUEUE_NAME=settings.QUEUE_NAME,
        DB_POOL_SIZE="2",
        DB_MAX_OVERFLOW="2",
        LOG_LEVEL="WARNING",
        RATE_LIMIT_MULTIPLIER="100",
    )
    started = [_start(env, tmp / f"api-{n}.log") for n in (1, 2)]
    try:
        for n, (proc, url) in enumerate(started, 1):
            _wait_ready(proc, url, tmp / f"api-{n}.log")
        yield started[0][1], started[1][1]
    finally:
        for proc, _ in started:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _get(url: str, path: str, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=10) as client:
        return (await client.get(path, headers=headers)).status_code


async def _call(url: str, method: str, path: str, headers: dict[str, str], **kw: object) -> int:
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=10) as client:
        return (await client.request(method, path, headers=headers, **kw)).status_code  # type: ignore[arg-type]


async def test_a_revoked_api_key_is_refused_by_the_other_process(apis, auth: Auth) -> None:
    one, other = apis
    owner = await auth.user()
    project = await auth.project(owner)
    key = await auth.api_key(owner)
    path = f"/projects/{project.id}"
    assert [await _get(url, path, key.headers) for url in (one, other)] == [200, 200]
    async with httpx.AsyncClient(base_url=one + "/api/v1") as client:
        keys = (await client.get("/api-keys", headers=owner.headers)).json()["data"]
        revoked = await client.delete(f"/api-keys/{keys[0]['id']}", headers=owner.headers)
    assert revoked.status_code == 204, revoked.text
    assert await _get(other, path, key.headers) == 401


async def test_a_deactivated_user_is_refused_by_the_other_process(apis, auth: Auth) -> None:
    one, other = apis
    admin = await auth.user(superuser=True)
    user = await auth.user()
    project = await auth.project(user)
    key = await auth.api_key(user)
    path = f"/projects/{project.id}"
    for url in (one, other):
        assert await _get(url, path, user.headers) == 200
        assert await _get(url, path, key.headers) == 200
    deactivate = await _call(
        one, "PATCH", f"/users/{user.user.id}", admin.headers, json={"is_active": False}
    )
    assert deactivate == 200
    assert await _get(other, path, user.headers) == 401
    assert await _get(other, path, key.headers) == 401


async def test_a_removed_member_is_refused_by_the_other_process(apis, auth: Auth) -> None:
    one, other = apis
    owner = await auth.user()
    project = await auth.project(owner)
    member = await auth.member(project, Role.member)
    key = await auth.api_key(member)
    path = f"/projects/{project.id}/agents"
    for url in (one, other):
        assert await _get(url, path, member.headers) == 200
        assert await _get(url, path, key.headers) == 200
    removed = await _call(
        one, "DELETE", f"/projects/{project.id}/members/{member.user.id}", owner.headers
    )
    assert removed == 204
    assert await _get(other, path, member.headers) == 404
    assert await _get(other, path, key.headers) == 404


async def test_a_lowered_role_is_refused_by_the_other_process(apis, auth: Auth) -> None:
    one, other = apis
    owner = await auth.user()
    project = await auth.project(owner)
    member = await auth.member(project, Role.member)
    spawn = {"agent_type_id": str(uuid.uuid4()), "name": "a"}  # no such type: 404 past the gate
    path = f"/projects/{project.id}/agents"
    for url in (one, other):
        assert await _call(url, "POST", path, member.headers, json=spawn) == 404
    lowered = await _call(
        one,
        "PATCH",
        f"/projects/{project.id}/members/{member.user.id}",
        owner.headers,
        json={"role": "viewer"},
    )
    assert lowered == 200
    assert await _call(other, "POST", path, member.headers, json=spawn) == 403
