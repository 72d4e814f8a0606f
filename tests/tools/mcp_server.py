"""A real MCP server for tests (the `mcp` SDK's MCPServer over streamable HTTP, in this event
loop), with tools that misbehave on purpose and a record of every request it received."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ImageContent, TextContent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.tools.demo_server import new_server, serve_mcp


@dataclass
class Seen:
    http_method: str
    rpc_method: str | None  # None: not a JSON-RPC request (e.g. a session's DELETE)
    authorization: str | None


@dataclass
class Recorded:
    url: str
    requests: list[Seen]
    slow_started: int = 0
    slow_finished: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends what waits for it

    def count(self, rpc_method: str) -> int:
        return sum(1 for r in self.requests if r.rpc_method == rpc_method)


class _Recorder:
    """Records each request's JSON-RPC method and Authorization header; answers 401 to a
    request without the required one; optionally holds tools/list until released, or plays a
    server of the 2025 protocol (no server/discover: clients fall back to the handshake)."""

    def __init__(
        self, app: ASGIApp, state: Recorded, require_auth: str | None, hold_list: bool, legacy: bool
    ) -> None:
        self.app, self.state, self.require_auth = app, state, require_auth
        self.hold_list, self.legacy = hold_list, legacy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while not messages or messages[-1].get("more_body"):
            messages.append(await receive())
        body = b"".join(m.get("body", b"") for m in messages)
        message = json.loads(body) if body.startswith(b"{") else {}
        method = message.get("method")
        auth = dict(scope["headers"]).get(b"authorization")
        self.state.requests.append(
            Seen(scope["method"], method, auth.decode() if auth is not None else None)
        )
        if self.require_auth is not None and (auth or b"").decode() != self.require_auth:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        if scope["method"] == "GET" and self.legacy:  # allowed: no stream for the session
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if method == "server/discover" and self.legacy:
            error = {"code": -32601, "message": "Method not found"}
            answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error})
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer.encode()})
            return
        if method == "tools/list" and self.hold_list:
            await self.state.release.wait()

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


@asynccontextmanager
async def serve_test_server(
    *,
    require_auth: str | None = None,
    hold_list: bool = False,
    legacy: bool = False,
    sock: socket.socket | None = None,
    name: str = "test",
) -> AsyncIterator[Recorded]:
    server = new_server(name)
    state = Recorded(url="", requests=[])

    @server.tool(structured_output=False)
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool(structured_output=False)
    async def slow() -> str:
        """Waits until the test releases it."""
        state.slow_started += 1
        await state.release.wait()
        state.slow_finished += 1
        return "finally"

    @server.tool(structured_output=False)
    def boom() -> str:
        """Raises: the SDK answers an isError result."""
        raise ValueError("kaboom")

    @server.tool(structured_output=False)
    def rpc_error() -> str:
        """Answers a JSON-RPC error."""
        raise MCPError(-32050, "quota exhausted")

    @server.tool()
    def refuse() -> CallToolResult:
        """Answers isError itself."""
        return CallToolResult(content=[TextContent(text="not today")], is_error=True)

    @server.tool()
    def structured() -> CallToolResult:
        """Structured content and no text."""
        return CallToolResult(content=[], structured_content={"sum": 3, "unit": "€"})

    @server.tool()
    def picture() -> CallToolResult:
        """An image between two texts."""
        image = ImageContent(data="iVBORw0KGgo=", mime_type="image/png")
        return CallToolResult(content=[TextContent(text="before"), image, TextContent(text="after")])  # fmt: skip

    @server.tool(name="dotted.name", structured_output=False)
    def dotted() -> str:
        """A name no provider accepts."""
        return "unreachable"

    app = _Recorder(server.streamable_http_app(), state, require_auth, hold_list, legacy)
    async with serve_mcp(app, sock=sock) as url:
        state.url = url
        try:
            yield state
        finally:
            state.release.set()  # before the server stops: it waits for open requests


def tool_names(tools: list[Any]) -> set[str]:
    return {t.offered_name for t in tools}
