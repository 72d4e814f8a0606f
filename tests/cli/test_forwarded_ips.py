"""X-Forwarded-For sets the client IP (rate-limit key of anonymous routes) only from
FORWARDED_ALLOW_IPS, on a real uvicorn server configured as `agentry api` / `agentry dev` do."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from backend.cli import uvicorn_config
from backend.main import create_app
from tests.conftest import make_settings

REFRESH = "/api/v1/auth/refresh"  # anonymous, limited only per client IP


@asynccontextmanager
async def serving(settings) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "server did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def remaining(client: httpx.AsyncClient, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = await client.post(REFRESH, json={"refresh_token": "nope"}, headers=headers)
    assert response.status_code == 401, response.text
    return int(response.headers["x-ratelimit-remaining"])


@pytest.mark.parametrize("trusted", ["", "10.9.9.9, 192.168.0.0/16"])
async def test_forged_forwarded_for_is_ignored_from_untrusted_peers(
    database_url, server_urls, clean, trusted
) -> None:
    settings = make_settings(database_url, server_urls.redis, FORWARDED_ALLOW_IPS=trusted)
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        first = await remaining(client, None)
        # Each forged address lands on the same (the peer's) budget.
        assert await remaining(client, "203.0.113.7") == first - 1
        assert await remaining(client, "203.0.113.8") == first - 2


@pytest.mark.parametrize("trusted", ["127.0.0.1", "127.0.0.0/8", "*"])
async def test_forwarded_for_is_the_client_ip_from_a_trusted_proxy(
    database_url, server_urls, clean, trusted
) -> None:
    settings = make_settings(database_url, server_urls.redis, FORWARDED_ALLOW_IPS=trusted)
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        first = await remaining(client, None)
        assert await remaining(client, "203.0.113.7") == first  # a budget of its own
        assert await remaining(client, "203.0.113.7") == first - 1
        assert await remaining(client, None) == first - 1  # the proxy's own, unchanged


def test_forwarded_allow_ips_must_be_addresses(database_url, server_urls) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        make_settings(database_url, server_urls.redis, FORWARDED_ALLOW_IPS="10.0.0.1, proxy")
