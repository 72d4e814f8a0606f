"""A tiny HTTP-aware TCP proxy for failure tests: one request per client connection, and per
request a decision: forward it, drop the connection once the server has answered (so the
server did the work but the client never hears of it), cut an event stream after N events,
or answer by itself (a 503, a 429)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Action:
    kind: str = "forward"  # forward | drop | cut | respond
    events: int = 0  # cut: after this many complete events
    response: bytes = b""  # respond: the raw HTTP response


FORWARD = Action()


def respond(status: int, body: str = "{}", **headers: str) -> Action:
    lines = [f"HTTP/1.1 {status} Proxy", "Content-Type: application/json"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", body]
    return Action("respond", response="\r\n".join(lines).encode())


@dataclass
class Proxy:
    upstream_port: int
    decide: Callable[[int, Seen], Action]
    seen: list[Seen] = field(default_factory=list)
    streamed: list[bytes] = field(default_factory=list)  # what cut streams forwarded

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def matching(self, method: str, fragment: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and fragment in s.path]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            request = _read_request(client)
            if request is None:
                return
            seen, raw = request
            with self._lock:
                index = len(self.seen)
                self.seen.append(seen)
            action = self.decide(index, seen)
            if action.kind == "respond":
                client.sendall(action.response)
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(raw)
                if action.kind == "drop":
                    upstream.recv(1)  # the server answered: it has done the work
                    return
                self._pump(upstream, client, action)

    def _pump(self, upstream: socket.socket, client: socket.socket, action: Action) -> None:
        sent = b""
        while chunk := upstream.recv(65536):
            if action.kind == "cut":
                sent += chunk
                ends = _event_ends(sent)
                if len(ends) >= action.events:
                    keep = sent[: ends[action.events - 1]]
                    client.sendall(chunk[: len(chunk) - (len(sent) - len(keep))])
                    self.streamed.append(keep)
                    return
            client.sendall(chunk)


def _event_ends(data: bytes) -> list[int]:
    """Offsets just after each complete SSE event that carries data."""
    ends, start = [], data.find(b"\r\n\r\n") + 4  # past the response head
    while (i := data.find(b"\n\n", start)) != -1:
        if b"data:" in data[start:i]:
            ends.append(i + 2)
        start = i + 2
    return ends


def _read_request(client: socket.socket) -> tuple[Seen, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += client.recv(65536)
    # One request per connection: the server closes after answering.
    kept = [line for line in lines[1:] if not line.lower().startswith("connection:")]
    raw = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
    return Seen(method, path, headers, body), raw
