"""A TCP proxy a test can cut and restore: a real network fault between one client (a worker)
and a server (Postgres, Redis), while the test's own connections go straight to the server."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


class Proxy:
    """Listens on 127.0.0.1:<port>; forwards to a TCP address or a unix socket. `cut()` drops
    every open connection and refuses new ones (the port closed: connection refused), as a
    server that went down; `restore()` listens again on the same port."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        socket_dir = parse_qs(parts.query).get("host", [None])[0]
        if socket_dir:  # a Postgres on a unix socket: host=<dir>&port=<n>
            port = parse_qs(parts.query)["port"][0]
            self._target: tuple[str, ...] = (f"{socket_dir}/.s.PGSQL.{port}",)
        else:
            self._target = (parts.hostname or "127.0.0.1", str(parts.port))
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def proxied_url(self) -> str:
        """`url`, reaching the server through this proxy."""
        parts = urlsplit(self.url)
        netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        self.cut()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if len(self._target) == 1:
            return await asyncio.open_unix_connection(self._target[0])
        return await asyncio.open_connection(self._target[0], int(self._target[1]))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_target()
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
