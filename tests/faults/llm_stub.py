"""A counting LLM: a local HTTP server speaking OpenAI's streamed Chat Completions.

It records every call it receives: the request's last user message (each run's input is unique,
so calls map to runs), the usage it answered with, and whether the answer was delivered (the
whole stream written) or the client went away first (its worker was SIGKILLed mid-call).

The answer waits `latency` seconds (the model name's `-ms-<n>` suffix, e.g. `stub-ms-1500`),
and longer while a hold matches the input (`hold(prefix)` ... `release(prefix)`): a test
parks a call in flight, faults something, then lets it answer. It runs on its own thread and
event loop, so a test blocked in a synchronous call (stopping Postgres) does not stall it.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_LATENCY = re.compile(r"-ms-(\d+)$")
_POLL = 0.01


@dataclass
class Call:
    n: int  # the stub's call counter, from 1
    input: str
    model: str
    peer: tuple[str, int]
    started: float
    usage: dict[str, int] = field(default_factory=dict)
    delivered: bool = False
    disconnected: bool = False  # the client closed the connection before the answer

    @property
    def in_flight(self) -> bool:
        return not (self.delivered or self.disconnected)


def usage_for(n: int) -> dict[str, int]:
    """Different numbers per call: a call counted twice or lost changes every sum."""
    prompt, completion = 100 + n, 5 + n % 11
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class LlmStub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._holds: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- control (any thread) ---------------------------------------------------------------

    def start(self) -> LlmStub:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="llm-stub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the LLM stub did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        server, loop = self._server, self._loop
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def hold(self, prefix: str) -> None:
        """Answers to inputs starting with `prefix` wait until `release(prefix)`."""
        with self._lock:
            self._holds.add(prefix)

    def release(self, prefix: str) -> None:
        with self._lock:
            self._holds.discard(prefix)

    def calls(self, prefix: str = "") -> list[Call]:
        """Calls whose input starts with `prefix`, in arrival order (copies)."""
        with self._lock:
            return [Call(**vars(c)) for c in self._calls if c.input.startswith(prefix)]

    def delivered(self, run_input: str) -> list[Call]:
        return [c for c in self.calls(run_input) if c.input == run_input and c.delivered]

    # --- server (the stub's loop) -----------------------------------------------------------

    def _held(self, text: str) -> bool:
        with self._lock:
            return any(text.startswith(prefix) for prefix in self._holds)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            path, body = request
            if not path.endswith("/chat/completions"):
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            call = self._record(body, writer.get_extra_info("peername"))
            if await self._wait_or_disconnect(call, reader):
                return
            writer.write(_stream(call))
            await writer.drain()
            with self._lock:
                call.delivered = True
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _record(self, body: dict[str, Any], peer: Any) -> Call:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        model = str(body.get("model", ""))
        with self._lock:
            n = len(self._calls) + 1
            call = Call(
                n, str(users[-1]["content"]) if users else "", model, tuple(peer), time.time()
            )
            call.usage = usage_for(n)
            self._calls.append(call)
        return call

    async def _wait_or_disconnect(self, call: Call, reader: asyncio.StreamReader) -> bool:
        """Wait out the latency and any hold; True when the client went away meanwhile."""
        match = _LATENCY.search(call.model)
        ready_at = time.monotonic() + (int(match.group(1)) / 1000 if match else 0)
        eof = asyncio.ensure_future(reader.read(1))  # the client sends nothing more: b"" = gone
        try:
            while time.monotonic() < ready_at or self._held(call.input):
                done, _ = await asyncio.wait([eof], timeout=_POLL)
                if done:
                    with self._lock:
                        call.disconnected = True
                    return True
            return False
        finally:
            eof.cancel()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    return path, (json.loads(raw) if raw else {})


def _chunk(
    call: Call, delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None
) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    data = {
        "id": f"chatcmpl-stub-{call.n}",
        "object": "chat.completion.chunk",
        "created": int(call.started),
        "model": call.model,
        "choices": choices,
        "usage": usage,
    }
    return f"data: {json.dumps(data)}\n\n"


def _stream(call: Call) -> bytes:
    """The whole answer: role, two text deltas, finish, usage, [DONE]; chunked encoding."""
    events = [
        _chunk(call, {"role": "assistant", "content": ""}),
        _chunk(call, {"content": "ok: "}),
        _chunk(call, {"content": call.input}),
        _chunk(call, {}, "stop"),
        _chunk(call, None, usage=call.usage),
        "data: [DONE]\n\n",
    ]
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        "transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    body = "".join(f"{len(e.encode()):x}\r\n{e}\r\n" for e in events) + "0\r\n\r\n"
    return (head + body).encode()
