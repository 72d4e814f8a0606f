"""A real HTTP receiver for webhook tests: records every request, answers from a script."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

HANG = "hang"  # read the request, never answer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str = "/hook"

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers the n-th request with script[n] (an HTTP status or HANG), then `default`."""

    script: list[int | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _hung: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._hung:
                writer.close()
            await self._server.wait_closed()

    def events(self) -> list[dict[str, Any]]:
        return [r.json for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (line.split(":", 1) for line in lines if ":" in line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = self.script.pop(0) if self.script else self.default
                self.requests.append(Received(headers, body, request_line.split(" ")[1]))
                if answer == HANG:
                    self._hung.append(writer)
                    await reader.read()  # until the client gives up
                    return
                # A redirect names somewhere else on this receiver (a follower would go there).
                location = "location: /elsewhere\r\n" if 300 <= int(answer) < 400 else ""
                head = f"HTTP/1.1 {answer} X\r\n{location}content-length: 2\r\n\r\n"
                writer.write(head.encode() + b"ok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
