"""A small closed-loop HTTP/1.1 keep-alive load generator on raw asyncio protocols.

httpx tops out at a few thousand requests/s per core, below the servers we measure; this
client keeps `connections` sockets busy (one request in flight each, no pipelining), records
every response's latency, and counts only responses that complete inside the measured
window (after `warmup` seconds). Run it under uvloop (see `run`).

It understands exactly what our servers send: Content-Length bodies, and chunked bodies
well enough to find their end.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_HEADER_END = b"\r\n\r\n"


def build_request(
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> bytes:
    """The raw bytes of one keep-alive HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass
class Result:
    seconds: float
    connections: int
    latencies_ms: array = field(default_factory=lambda: array("d"))
    statuses: dict[int, int] = field(default_factory=dict)
    reconnects: int = 0
    sample_error: str | None = None
    all_responses: int = 0  # warm-up included
    server_cpu_s: float | None = None  # set by the caller when it can see the server process

    def merge(self, other: Result) -> Result:
        """Two measurements of the same case as one (interleaved rounds)."""
        statuses = dict(self.statuses)
        for status, n in other.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
        cpu = None
        if self.server_cpu_s is not None and other.server_cpu_s is not None:
            cpu = self.server_cpu_s + other.server_cpu_s
        return Result(
            seconds=self.seconds + other.seconds,
            connections=self.connections,
            latencies_ms=self.latencies_ms + other.latencies_ms,
            statuses=statuses,
            reconnects=self.reconnects + other.reconnects,
            sample_error=self.sample_error or other.sample_error,
            all_responses=self.all_responses + other.all_responses,
            server_cpu_s=cpu,
        )

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "connections": self.connections,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "reconnects": self.reconnects,
            "server_cpu_ms_per_req": _round(
                self.server_cpu_s * 1000 / self.all_responses
                if self.server_cpu_s is not None and self.all_responses
                else None
            ),
            "rps": round(self.rps, 1),
            "p50_ms": _round(self.percentile(50)),
            "p90_ms": _round(self.percentile(90)),
            "p99_ms": _round(self.percentile(99)),
            "max_ms": _round(max(self.latencies_ms) if self.latencies_ms else None),
            "sample_error": self.sample_error,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Shared:
    """State every connection of one run reads: the request cycle and the time window."""

    def __init__(
        self,
        requests: Sequence[bytes],
        start: float,
        end: float,
        result: Result,
        *,
        once: bool = False,
    ):
        self.requests = requests
        self.next_index = 0
        self.start = start  # responses completing before this are warm-up
        self.end = end  # no request is sent after this
        self.result = result
        self.once = once  # send each request exactly once instead of cycling

    @property
    def exhausted(self) -> bool:
        return self.once and self.next_index >= len(self.requests)

    def next_request(self) -> bytes | None:
        if self.exhausted:
            return None
        request = self.requests[self.next_index % len(self.requests)]
        self.next_index += 1
        return request


class _Connection(asyncio.Protocol):
    def __init__(self, shared: _Shared, done: asyncio.Future[None]) -> None:
        self.shared = shared
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.status = 0
        self.body_end: int | None = None  # index in buffer where the response ends
        self.chunked = False
        self.header_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        now = time.perf_counter()
        request = self.shared.next_request() if now < self.shared.end else None
        if request is None:
            self._finish()
            return
        self.sent_at = now
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._parse():
            now = time.perf_counter()
            self.shared.result.all_responses += 1
            if now >= self.shared.start and now <= self.shared.end:
                result = self.shared.result
                result.latencies_ms.append((now - self.sent_at) * 1000.0)
                result.statuses[self.status] = result.statuses.get(self.status, 0) + 1
                if not 200 <= self.status < 300 and result.sample_error is None:
                    result.sample_error = bytes(self.buffer[: self.body_end])[-300:].decode(
                        "utf-8", "replace"
                    )
            del self.buffer[: self.body_end]
            self.body_end = None
            self.header_len = 0
            self._send()

    def _parse(self) -> bool:
        """True when the buffer holds one complete response (sets status and body_end)."""
        if not self.header_len:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                return False
            self.header_len = end + 4
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            self.body_end = None
            if not self.chunked:
                marker = head.find(b"content-length:")
                length = 0
                if marker >= 0:
                    stop = head.find(b"\r\n", marker)
                    length = int(head[marker + 15 : stop if stop >= 0 else None])
                self.body_end = self.header_len + length
        if self.chunked:
            last = self.buffer.find(b"0\r\n\r\n", self.header_len)
            if last < 0:
                return False
            self.body_end = last + 5
        return self.body_end is not None and len(self.buffer) >= self.body_end

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)


async def _drive(host: str, port: int, shared: _Shared) -> None:
    """One connection slot: reconnect if the server closes it before the window ends."""
    loop = asyncio.get_running_loop()
    first = True
    while time.perf_counter() < shared.end and not shared.exhausted:
        done: asyncio.Future[None] = loop.create_future()
        if not first:
            shared.result.reconnects += 1
        first = False
        try:
            await loop.create_connection(lambda d=done: _Connection(shared, d), host, port)
        except OSError as exc:
            shared.result.sample_error = shared.result.sample_error or f"connect: {exc}"
            await asyncio.sleep(0.05)
            continue
        await done


async def measure(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    seconds: float,
    warmup: float,
    connections: int = 32,
) -> Result:
    """Keep `connections` requests in flight for warmup + seconds; count the last `seconds`."""
    if not requests:
        raise ValueError("need at least one request")
    result = Result(seconds=seconds, connections=connections)
    start = time.perf_counter() + warmup
    shared = _Shared(requests, start, start + seconds, result)
    drivers = [asyncio.create_task(_drive(host, port, shared)) for _ in range(connections)]
    # Responses still in flight when the window closes are not counted; give them a moment.
    await asyncio.wait(drivers, timeout=warmup + seconds + 10)
    for task in drivers:
        task.cancel()
    return result


async def send_all(
    host: str, port: int, requests: Sequence[bytes], *, connections: int = 32
) -> Result:
    """Send every request exactly once over `connections` connections, as fast as they answer.

    The result's `seconds` is the wall time from the first send to the last response.
    """
    result = Result(seconds=0.0, connections=connections)
    start = time.perf_counter()
    shared = _Shared(requests, start, float("inf"), result, once=True)
    slots = min(connections, len(requests))
    await asyncio.gather(*(_drive(host, port, shared) for _ in range(slots)))
    result.seconds = time.perf_counter() - start
    return result


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is a uvicorn[standard] dependency), else asyncio's default."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
