"""`agentry dev` as a user runs it: embedded services, /ready, the demo MCP server, clean stop,
restart on the same data."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from backend.tools.mcp import McpServer, McpTools

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIRST_SUPERUSER_EMAIL")
    }
    env.update(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="WARNING")
    return subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "dev"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("agentry dev did not become ready")


def _demo_mcp_url(proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The URL the banner gives for the demo MCP server (output read unbuffered: the rest is
    left to communicate())."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, seen.decode()
            seen += chunk
            if found := re.search(rb"MCP demo: +(\S+)", seen):
                return found[1].decode()
    pytest.fail(f"no demo MCP server in the banner: {seen.decode()}")


async def _demo_tools(url: str) -> tuple[set[str], str]:
    tools = McpTools()
    try:
        demo = McpServer("demo", url)
        offered = await tools.list_tools([demo], timeout=10)
        added = await tools.call(demo, "add", {"a": 20, "b": 22}, timeout=10)
        return {t.offered_name for t in offered}, added.output
    finally:
        await tools.aclose()


def _servers_under(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if str(data_dir) in text and proc.pid != os.getpid():
            found.append(proc)
    return found


def _login(port: int) -> str:
    r = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/auth/login",
        json={"email": "admin@example.com", "password": "agentry-admin"},
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def _tool_demo(port: int, token: str) -> dict:
    types = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/agent-types",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["data"]
    return next(t for t in types if t["slug"] == "tool-demo")


def _tool_demo_waits(port: int, token: str, project_id: str, demo_url: str) -> str:
    """A seeded tool-demo run calls the demo server, then waits for its client tool: the
    output of its word_count step."""
    base, auth = f"http://127.0.0.1:{port}/api/v1", {"Authorization": f"Bearer {token}"}
    tool_demo = _tool_demo(port, token)
    assert tool_demo["mcp_servers"][0]["url"] == demo_url
    agent = httpx.post(
        f"{base}/projects/{project_id}/agents",
        json={"agent_type_id": tool_demo["id"], "name": "tools"},
        headers=auth,
    ).json()
    run = httpx.post(
        f"{base}/projects/{project_id}/agents/{agent['id']}/runs?wait=20",
        json={"input": "go"},
        headers=auth,
        timeout=30,
    ).json()
    assert run["status"] == "requires_action", run
    assert run["required_action"]["tool_calls"][0]["name"] == "lookup"
    steps = httpx.get(f"{base}/projects/{project_id}/runs/{run['id']}/steps", headers=auth)
    return steps.json()["data"][1]["output"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_serves_stops_cleanly_and_reuses_data(stop_signal: signal.Signals) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="agentry-dev-"))
    port = _free_port()
    proc = _start(data_dir, port)
    try:
        demo_url = _demo_mcp_url(proc)
        _wait_ready(proc, port)
        assert asyncio.run(_demo_tools(demo_url)) == ({"demo__add", "demo__word_count"}, "42")
        token = _login(port)
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/projects",
            json={"name": "Kept"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.text
        assert _tool_demo_waits(port, token, r.json()["id"], demo_url) == "4"
        proc.send_signal(stop_signal)
        output = proc.communicate(timeout=30)[0].decode()
        assert "Agentry stopped." in output
        assert _servers_under(data_dir) == []
        with pytest.raises(ConnectionRefusedError):  # the demo server stopped with the rest
            socket.create_connection(("127.0.0.1", int(demo_url.split(":")[2].split("/")[0])))

        proc = _start(data_dir, port)
        demo_url = _demo_mcp_url(proc)
        _wait_ready(proc, port)
        assert _tool_demo(port, _login(port))["mcp_servers"][0]["url"] == demo_url  # followed
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/projects",
            headers={"Authorization": f"Bearer {_login(port)}"},
        ).json()
        assert [p["name"] for p in listed["data"]] == ["Kept"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        for leftover in _servers_under(data_dir):
            leftover.kill()
