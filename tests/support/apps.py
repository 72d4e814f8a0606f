"""Helpers: a second, differently configured app; a closed port; log capture; cheap hashing."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from fastapi import FastAPI
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from structlog.stdlib import ProcessorFormatter

from backend.config import Settings
from backend.core import security
from backend.main import create_app


@asynccontextmanager
async def running_app(
    settings: Settings,
    *,
    setup: Callable[[FastAPI], None] | None = None,
    client_ip: str = "127.0.0.1",
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """create_app(settings) with its lifespan running, and a client on it.

    App exceptions are not re-raised into the test: the test sees what a real client would.
    """
    app = create_app(settings)
    if setup is not None:
        setup(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=(client_ip, 40000)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


def closed_port_url(scheme: str = "redis", path: str = "/0") -> str:
    """A URL on a local port nobody listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}{path}"


@contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Everything the app logs (as rendered by our formatter) while the block runs."""
    root = logging.getLogger()
    buffer = io.StringIO()
    # Only the app's own handler (configure_logging's), not pytest's capturing ones.
    handlers = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and isinstance(h.formatter, ProcessorFormatter)
    ]
    old_streams = [h.setStream(buffer) for h in handlers]
    old_level = root.level
    root.setLevel(level)
    try:
        yield buffer
    finally:
        root.setLevel(old_level)
        for handler, stream in zip(handlers, old_streams, strict=True):
            handler.setStream(stream)


@contextmanager
def cheap_password_hashing() -> Iterator[None]:
    """Argon2 with the lowest cost, for tests that hash hundreds of times or race on it.

    The same algorithm and code path; only the (memory, time) cost of new hashes drops.
    """
    fast = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(security, "_hasher", fast)
        patch.setattr(security, "_DUMMY_HASH", fast.hash("dummy-password"))
        yield
