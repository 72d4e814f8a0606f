"""The webhook POST: HTTP/1.1 on kept-alive connections (a pool per endpoint), the response
parsed by httptools (C; uvicorn's parser). httpx spent ~2 ms of CPU per request here, most of
a delivery's cost (its pool inspects every connection's socket for every request); this is a
tenth of that. Only what a webhook needs: POST, no redirects followed, no proxies, the
response's status (its body is read and dropped, to reuse the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from backend.webhooks import urls

READ_BYTES = 65536
MAX_BODY_BYTES = 65536  # a longer answer is read no further: its connection is closed


class ResponseError(ConnectionError):
    """The peer closed or answered something that is not HTTP/1.x."""


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@dataclass
class _Response:
    """httptools' callbacks."""

    headers_done: bool = False
    done: bool = False
    body_bytes: int = 0

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.done = True


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


@dataclass
class Client:
    """POSTs to one endpoint's URL(s); at most `keep` idle connections kept."""

    timeout: float
    keep: int
    allow_private: bool
    idle: dict[tuple[str, str, int], list[_Connection]] = field(default_factory=dict)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The response's status; raises TimeoutError (the whole exchange, connection
        included, took longer than `timeout`), OSError (connection, TLS, a malformed answer)
        or urls.UrlRefused (the host resolves to a refused address)."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        key = (parts.scheme, host, parts.port or (443 if https else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"POST {target} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-length: {len(body)}\r\n"
        request = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        async with asyncio.timeout(self.timeout):
            pool = self.idle.setdefault(key, [])
            while pool:  # a kept connection the peer closed meanwhile: the next one, or new
                conn = pool.pop()
                status = await self._exchange(conn, request + body, key, reused=True)
                if status is not None:
                    return status
            conn = await self._connect(url, key, https)
            status = await self._exchange(conn, request + body, key, reused=False)
            assert status is not None
            return status

    async def _connect(self, url: str, key: tuple[str, str, int], https: bool) -> _Connection:
        # The address checked is the one connected to (no second resolution in between).
        address = await urls.resolve(url, allow_private=self.allow_private) or key[1]
        reader, writer = await asyncio.open_connection(
            address,
            key[2],
            ssl=_tls() if https else None,
            server_hostname=key[1] if https else None,
            limit=READ_BYTES,
        )
        return _Connection(reader, writer)

    async def _exchange(
        self, conn: _Connection, data: bytes, key: tuple[str, str, int], *, reused: bool
    ) -> int | None:
        """The status, or None: a reused connection was closed before any answer."""
        response = _Response()
        parser = httptools.HttpResponseParser(response)
        received = False
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            while not response.done:
                chunk = await conn.reader.read(READ_BYTES)
                if not chunk:
                    if response.headers_done:
                        break  # a body that ends with the connection
                    raise ResponseError("connection closed before a response")
                received = True
                parser.feed_data(chunk)
                if response.body_bytes > MAX_BODY_BYTES:
                    break
        except (OSError, httptools.HttpParserError) as exc:
            conn.close()
            if reused and not received:
                return None
            if isinstance(exc, OSError):
                raise
            raise ResponseError(f"invalid response: {exc}") from None
        except BaseException:
            conn.close()  # timed out or cancelled mid-exchange: the connection is unusable
            raise
        if response.done and parser.should_keep_alive() and len(self.idle[key]) < self.keep:
            self.idle[key].append(conn)
        else:
            conn.close()
        return int(parser.get_status_code())

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
                with contextlib.suppress(Exception):
                    await conn.writer.wait_closed()
        self.idle.clear()
