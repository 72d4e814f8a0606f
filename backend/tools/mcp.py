"""The worker's access to MCP servers (API.md "Tools, steps and required actions").

- Discovery: `list_tools` lists each server's tools (only its `allowed_tools` when given) and
  offers them as `<server>__<tool>`. A listing is cached per (url, headers) for
  `cache_seconds`; concurrent steps share one request. A server that cannot be reached, times
  out or errors gives no tools this step and is asked again at the next one (failures are not
  cached).
- Calls: `call` is bounded by its timeout. A server that cannot be reached, times out, answers
  a JSON-RPC error or an `isError` result gives `ToolResult(is_error=True)`; `call` never
  raises for those.
- Sessions: one MCP client session per (url, headers), kept open in this process and shared by
  every call (a call is then one HTTP request, not a handshake, a call and a listing). A
  session that failed once is given to no new call and closes when its last call ends, so the
  next call opens a fresh one; a session idle for `_IDLE_SECONDS` is closed.

Header values are secrets: sent, never logged (logs name the server and the error's class).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    AudioContent,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    Implementation,
    ResourceLink,
    TextContent,
    Tool,
)

log = structlog.get_logger()

# The providers' rule for tool names (API.md): a server tool whose offered name breaks it is
# left out rather than failing every model step of the type.
OFFERED_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_PAGES = 100  # a tools/list that never ends cannot hang discovery
_IDLE_SECONDS = 300.0  # an unused session is closed after this
_CLOSE_SECONDS = 5.0  # aclose() waits this long for sessions to end cleanly
_MAX_MESSAGE = 1000  # characters of a server's error message given to the model
# Our own timeout bounds every operation; these only keep the SDK's defaults explicit.
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
_CLIENT_INFO = Implementation(name="agentry", version="1")

_Key = tuple[str, tuple[tuple[str, str], ...]]
T = TypeVar("T")


@dataclass(frozen=True)
class McpServer:
    """One entry of an agent type's `mcp_servers`, with its headers in plaintext."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False, hash=False)  # secrets
    allowed_tools: tuple[str, ...] | None = None
    require_approval: str | tuple[str, ...] = "never"  # "never" | "always" | server tool names

    def allows(self, tool: str) -> bool:
        return self.allowed_tools is None or tool in self.allowed_tools

    def needs_approval(self, tool: str) -> bool:
        if isinstance(self.require_approval, str):
            return self.require_approval == "always"
        return tool in self.require_approval


@dataclass(frozen=True)
class ServerTool:
    offered_name: str  # f"{server}__{tool}", what the model sees
    server: str
    tool: str
    description: str
    input_schema: dict[str, Any]
    needs_approval: bool


@dataclass(frozen=True)
class ToolResult:
    output: str
    is_error: bool


def _key(server: McpServer) -> _Key:
    return server.url, tuple(sorted(server.headers.items()))


class _Session:
    """One MCP client session, held open by its own task: the SDK's task groups must be entered
    and left by one task, while calls come from the tasks of many runs."""

    def __init__(self, server: McpServer) -> None:
        self.ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        # An error nobody waits for any more (its caller timed out) is not worth a warning.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.failed = False  # once set, the session is given to no new call
        self.users = 0
        self.served = 0  # operations that succeeded on it
        self.last_used = time.monotonic()
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._hold(server.url, dict(server.headers)))

    async def _hold(self, url: str, headers: dict[str, str]) -> None:
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=_HTTP_TIMEOUT) as http,
                Client(
                    streamable_http_client(url, http_client=http),
                    cache=None,  # the listing cache is ours (per url and headers, short)
                    client_info=_CLIENT_INFO,
                ) as client,
            ):
                self.ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:  # could not connect, or the transport broke: its callers see it
            if not self.ready.done():
                self.ready.set_exception(exc)
        finally:
            self.failed = True
            if not self.ready.done():  # cancelled while connecting
                self.ready.set_exception(ConnectionError("MCP session closed"))

    def close(self) -> None:
        self.failed = True
        if self.ready.done():
            self._stop.set()
        else:
            self.task.cancel()


class McpTools:
    """MCP discovery and calls for one worker process (see the module's docstring)."""

    def __init__(self, *, cache_seconds: float = 30.0) -> None:
        self._cache_seconds = cache_seconds
        self._listings: dict[_Key, tuple[float, list[Tool]]] = {}
        self._fetching: dict[_Key, asyncio.Task[list[Tool]]] = {}
        self._sessions: dict[_Key, _Session] = {}  # the session new calls get, per server
        self._open: set[_Session] = set()  # including failed ones still in use
        self._warned: set[tuple[str, str]] = set()

    async def list_tools(self, servers: Sequence[McpServer], *, timeout: float) -> list[ServerTool]:
        listings = await asyncio.gather(*(self._listing(s, timeout) for s in servers))
        offered: list[ServerTool] = []
        for server, tools in zip(servers, listings, strict=True):
            names: set[str] = set()
            for tool in tools:
                name = f"{server.name}__{tool.name}"
                if not server.allows(tool.name) or name in names:
                    continue
                if not OFFERED_NAME.fullmatch(name):
                    self._warn_skipped(server.name, tool.name)
                    continue
                names.add(name)
                offered.append(
                    ServerTool(
                        offered_name=name,
                        server=server.name,
                        tool=tool.name,
                        description=tool.description or "",
                        input_schema=dict(tool.input_schema),
                        needs_approval=server.needs_approval(tool.name),
                    )
                )
        return offered

    async def call(
        self, server: McpServer, tool: str, arguments: dict[str, Any], *, timeout: float
    ) -> ToolResult:
        if not server.allows(tool):
            return ToolResult(f"MCP server '{server.name}' does not offer tool '{tool}'", True)

        async def call(client: Client) -> CallToolResult:
            return await client.call_tool(tool, arguments, read_timeout_seconds=timeout)

        try:
            async with asyncio.timeout(timeout):
                result = await self._on_session(server, call)
        except Exception as exc:
            log.info("mcp_call_failed", server=server.name, tool=tool, error=_leaf(exc).__class__.__name__)  # fmt: skip
            return ToolResult(_failure(server.name, exc, timeout), is_error=True)
        return ToolResult(_output(result), is_error=bool(result.is_error))

    async def aclose(self) -> None:
        for fetch in self._fetching.values():
            fetch.cancel()
        self._sessions.clear()
        sessions = list(self._open)
        for session in sessions:
            session.close()
        if sessions:
            _, late = await asyncio.wait([s.task for s in sessions], timeout=_CLOSE_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- discovery

    async def _listing(self, server: McpServer, timeout: float) -> list[Tool]:
        key = _key(server)
        cached = self._listings.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(server, key, timeout))
            self._fetching[key] = task
            task.add_done_callback(lambda _: self._fetching.pop(key, None))
        try:
            # Shielded: a step that stops waiting does not cancel the others' request.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            return []

    async def _fetch(self, server: McpServer, key: _Key, timeout: float) -> list[Tool]:
        async def list_all(client: Client) -> list[Tool]:
            tools: list[Tool] = []
            cursor: str | None = None
            for _ in range(_MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            return tools

        try:
            async with asyncio.timeout(timeout):
                tools = await self._on_session(server, list_all)
        except Exception as exc:
            log.warning("mcp_discovery_failed", server=server.name, error=_leaf(exc).__class__.__name__)  # fmt: skip
            return []
        self._listings[key] = (time.monotonic() + self._cache_seconds, tools)
        return tools

    def _warn_skipped(self, server: str, tool: str) -> None:
        if (server, tool) not in self._warned and len(self._warned) < 1000:
            self._warned.add((server, tool))
            log.warning(
                "mcp_tool_skipped", server=server, tool=tool[:100], reason="invalid offered name"
            )

    # -- sessions

    async def _on_session(
        self, server: McpServer, operation: Callable[[Client], Awaitable[T]]
    ) -> T:
        """`operation` on the server's shared session; once more on a fresh session when a
        session that had served turns out to be stale (the server forgot it, e.g. after a
        restart), which proves the request was not executed."""
        for attempt in (1, 2):
            served = False
            try:
                async with self._session(server) as (client, served):
                    return await operation(client)
            except Exception as exc:
                if attempt == 2 or not served or not _not_executed(exc):
                    raise
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _session(self, server: McpServer) -> AsyncIterator[tuple[Client, bool]]:
        """The server's session for one operation, and whether it served before; retired if
        the operation fails."""
        session = self._current(server)
        session.users += 1
        try:
            yield await asyncio.shield(session.ready), session.served > 0
            session.served += 1
        except BaseException:  # incl. our timeout's cancellation: the session may be stuck
            session.failed = True
            raise
        finally:
            session.users -= 1
            session.last_used = time.monotonic()
            if session.failed and session.users == 0:
                session.close()

    def _current(self, server: McpServer) -> _Session:
        now = time.monotonic()
        for key, idle in list(self._sessions.items()):
            if idle.failed or (idle.users == 0 and now - idle.last_used > _IDLE_SECONDS):
                del self._sessions[key]
                if idle.users == 0:
                    idle.close()
        key = _key(server)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(server)
            self._open.add(session)
            session.task.add_done_callback(lambda _: self._open.discard(session))
        return session


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside the SDK's task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _not_executed(exc: BaseException) -> bool:
    """The request never reached a tool: the server rejected the session (it restarted or
    expired it), or no connection could be made."""
    exc = _leaf(exc)
    return isinstance(exc, httpx2.ConnectError) or (
        isinstance(exc, MCPError) and exc.code == INVALID_REQUEST
    )


def _failure(server: str, exc: BaseException, timeout: float) -> str:
    """A short message for the model; never the URL or headers (an error's text may hold them)."""
    exc, who = _leaf(exc), f"MCP server '{server}'"
    if isinstance(exc, MCPError):
        if exc.code == REQUEST_TIMEOUT:
            return f"{who} timed out after {timeout:g} s"
        if exc.code == CONNECTION_CLOSED:
            return f"{who} closed the connection"
        return f"{who} answered an error: {exc.message[:_MAX_MESSAGE]}"
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return f"{who} timed out after {timeout:g} s"
    if isinstance(exc, httpx2.TransportError | OSError):
        return f"{who} cannot be reached ({type(exc).__name__})"
    return f"{who} failed ({type(exc).__name__})"


def _output(result: CallToolResult) -> str:
    """Text contents joined by newlines; structured content as JSON when there is no text;
    other kinds of content named."""
    parts = [_describe(block) for block in result.content]
    if result.structured_content is not None and not any(
        isinstance(block, TextContent) for block in result.content
    ):
        parts.insert(0, json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _describe(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent | AudioContent):
        return f"[{block.mime_type}]"
    if isinstance(block, ResourceLink):
        return f"[resource {block.uri}]"
    if isinstance(block, EmbeddedResource):
        return f"[resource {block.resource.uri}]"
    return f"[{getattr(block, 'type', 'content')}]"
