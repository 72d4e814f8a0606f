"""The webhook POST (backend/webhooks/http.py) against real local servers: kept-alive
connections, a peer that closes them, answers of every framing, no redirects, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from backend.webhooks import http, urls

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, answer: bytes, *, close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.bodies: list[bytes] = []
        self.heads: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Server], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> str:
        listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
        servers.append(listening)
        return f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/hook?x=1"

    yield start
    for listening in servers:
        listening.close()


def _client(timeout: float = 2.0) -> http.Client:
    return http.Client(timeout=timeout, keep=4, allow_private=True)


async def test_posts_reuse_one_kept_alive_connection(serve) -> None:
    server = Server(b"HTTP/1.1 204 No Content\r\n\r\n")
    url = await serve(server)
    client = _client()
    statuses = [await client.post(url, b'{"n":%d}' % n, {"webhook-id": "x"}) for n in range(5)]
    await client.aclose()
    assert statuses == [204] * 5
    assert server.connections == 1
    assert server.bodies == [b'{"n":%d}' % n for n in range(5)]
    assert server.heads[0].startswith("POST /hook?x=1 HTTP/1.1\r\n")
    assert "webhook-id: x\r\n" in server.heads[0]


async def test_a_connection_the_peer_closed_is_replaced(serve) -> None:
    # HTTP/1.1 keeps the connection (no `connection: close`), but the peer closes it anyway.
    server = Server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", close_after=True)
    url = await serve(server)
    client = _client()
    assert [await client.post(url, b"{}", {}) for _ in range(3)] == [200, 200, 200]
    await client.aclose()
    assert server.connections == 3
    assert len(server.bodies) == 3  # each sent once


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\ncontent-length: 5\r\n\r\nerror",
        b"HTTP/1.0 201 Created\r\n\r\nbody until the connection ends",
        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
    ],
)
async def test_answers_of_every_framing_give_their_status(serve, answer: bytes) -> None:
    server = Server(answer, close_after=answer.startswith(b"HTTP/1.0"))
    url = await serve(server)
    client = _client()
    status = await client.post(url, b"{}", {})
    again = await client.post(url, b"{}", {})
    await client.aclose()
    assert status == again == int(answer.split(b" ")[1])
    assert len(server.bodies) == 2  # a redirect is not followed


async def test_a_peer_that_never_answers_times_out(serve) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = Server(b"")
    server.serve = hang  # type: ignore[method-assign]
    url = await serve(server)
    with pytest.raises(TimeoutError):
        await _client(timeout=0.2).post(url, b"{}", {})


async def test_garbage_is_an_error_and_a_closed_port_refuses() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    with pytest.raises(http.ResponseError):
        await _client().post(f"http://127.0.0.1:{port}/", b"{}", {})
    listening.close()
    await listening.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await _client().post(f"http://127.0.0.1:{port}/", b"{}", {})


async def test_a_private_address_is_refused_before_connecting() -> None:
    client = http.Client(timeout=1, keep=1, allow_private=False)
    with pytest.raises(urls.UrlRefused):
        await client.post("http://127.0.0.1:9/hook", b"{}", {})
