"""A minimal pipelined Redis client for the per-request hot path (the rate limiter).

One connection per process: every command is written at once and its reply is matched
in order (Redis answers in order), so concurrent requests share the connection without
a lock or a pool checkout. redis-py pays a pool checkout with a non-blocking read probe,
retry wrappers and a timeout context per command, several times our cost for one EVALSHA.

Failures are the caller's to handle: a command that gets no reply within `timeout` fails
with TimeoutError and drops the connection (failing every command still waiting on it);
the next command reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url


class RedisReplyError(Exception):
    """Redis answered with an error (e.g. NOSCRIPT)."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            if future.done():  # its caller timed out or was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis connection lost"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.connection_lost(None)


class RedisPipe:
    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, *args: Any) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await self._send(protocol, hiredis.pack_command(args))

    async def _send(self, protocol: _Protocol, packed: bytes) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append(future)
        protocol.transport.write(packed)  # type: ignore[union-attr]
        timer = loop.call_later(self.timeout, self._expire, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, protocol: _Protocol, future: asyncio.Future[Any]) -> None:
        if not future.done():
            future.set_exception(TimeoutError("Redis did not answer in time"))
            protocol.close()  # a silent server: later replies could not be matched anyway

    async def _connect(self) -> _Protocol:
        # Concurrent first commands share one connection attempt.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            # Retrieved here too: its callers may all have been cancelled meanwhile.
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        kind = options.get("connection_class")
        async with asyncio.timeout(self.timeout):
            if kind is UnixDomainSocketConnection:
                _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
            else:
                host, port = options.get("host", "localhost"), int(options.get("port", 6379))
                tls = _ssl_context(options) if kind is SSLConnection else None
                _, protocol = await loop.create_connection(_Protocol, host, port, ssl=tls)
            try:
                if options.get("password"):
                    auth = [options.get("username"), options["password"]]
                    command: tuple[Any, ...] = ("AUTH", *filter(None, auth))
                    await self._send(protocol, hiredis.pack_command(command))
                if options.get("db"):
                    select_db: tuple[Any, ...] = ("SELECT", options["db"])
                    await self._send(protocol, hiredis.pack_command(select_db))
            except BaseException:
                protocol.close()
                raise
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    """rediss:// as redis-py reads it: ssl_ca_certs, ssl_certfile/ssl_keyfile, ssl_cert_reqs."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
