"""Request bodies over MAX_REQUEST_BODY_BYTES: 413 before they are read whole."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from backend.core.bodylimit import BodyLimitMiddleware
from tests.conftest import make_settings
from tests.support.apps import running_app

LIMIT = 4096
LOGIN = "/api/v1/auth/login"


@pytest.fixture
async def small_limit(database_url, server_urls, clean):
    settings = make_settings(
        database_url, server_urls.redis, MAX_REQUEST_BODY_BYTES=LIMIT, RATE_LIMIT_ENABLED=False
    )
    async with running_app(settings) as (_app, client):
        yield client


def login_body(size: int) -> bytes:
    """A login body of exactly `size` bytes (JSON whitespace pads it)."""
    body = json.dumps({"email": "nobody@example.com", "password": "wrong-password"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def assert_413(response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["request_id"] == response.headers["x-request-id"]


async def test_a_declared_length_over_the_limit_is_refused_unread(small_limit) -> None:
    response = await small_limit.post(
        LOGIN,
        content=login_body(LIMIT + 1),
        headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
    )
    assert_413(response)
    assert response.headers["x-request-id"] == "big-1"


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(small_limit) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"email": "nobody@example.com", "password": "'
        for _ in range(10_000):  # 10 MB if read whole
            sent += 1
            yield b"x" * 1024

    response = await small_limit.post(
        LOGIN, content=endless(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # really unknown length
    assert_413(response)
    assert sent <= LIMIT // 1024 + 2  # stopped reading right after the limit


async def test_a_body_of_exactly_the_limit_is_read(small_limit) -> None:
    body = login_body(LIMIT)
    declared = await small_limit.post(
        LOGIN, content=body, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 401, declared.text  # parsed: wrong credentials

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    streamed = await small_limit.post(
        LOGIN, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 401, streamed.text


async def test_websocket_messages_are_not_request_bodies() -> None:
    async def echo_length(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(str(len(await ws.receive_text())))
        await ws.close()

    app = BodyLimitMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", echo_length)]), max_bytes=1024
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with connect(f"ws://127.0.0.1:{sock.getsockname()[1]}/ws") as ws:
            await ws.send("x" * 10_000)
            assert await ws.recv() == "10000"
    finally:
        server.should_exit = True
        await task
        sock.close()
