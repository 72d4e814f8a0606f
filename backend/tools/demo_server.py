"""Our demo MCP server: a few harmless tools over the streamable HTTP transport, built with the
`mcp` SDK's server side. `agentry dev` serves it beside the API (its URL is
`settings.DEMO_MCP_URL`); tests serve it, or a server of their own, with `serve_mcp`.

    async with serve_demo() as url:   # http://127.0.0.1:<free port>/mcp
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

MCP_PATH = "/mcp"
_SHUTDOWN_SECONDS = 2


def new_server(name: str) -> MCPServer:
    """An empty MCPServer. Its constructor calls logging.basicConfig (a rich handler on a root
    logger that has none yet); the process's logging stays as it was configured."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return MCPServer(name)
    finally:
        root.handlers[:], root.level = handlers, level


def demo_server() -> MCPServer:
    server = new_server("demo")

    @server.tool(structured_output=False)
    def add(a: float, b: float) -> str:
        """Add two numbers; returns the sum."""
        total = a + b
        return str(int(total)) if total.is_integer() else str(total)

    @server.tool(structured_output=False)
    def word_count(text: str) -> str:
        """Count the words (separated by whitespace) in a text."""
        return str(len(text.split()))

    return server


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket, so a URL can be known before the server runs (no port race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so (else every
    # response waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{MCP_PATH}"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's owner (the API's server, or the test) handles Ctrl-C and stops us.
        yield


@contextlib.asynccontextmanager
async def serve_mcp(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve an MCP app (e.g. `server.streamable_http_app()`) with uvicorn in this event loop;
    yields its endpoint URL, and stops it on exit."""
    sock = sock or bind(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="on",  # runs the SDK's session manager
        timeout_graceful_shutdown=_SHUTDOWN_SECONDS,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # startup failed: raise its error
                raise RuntimeError("MCP server stopped during startup")
            await asyncio.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Ctrl-C cancels the task that owns us: finish the (bounded) shutdown, then go on.
            await task
            raise
        finally:
            sock.close()


@contextlib.asynccontextmanager
async def serve_demo(
    host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve the demo server; yields its MCP endpoint URL."""
    app = demo_server().streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host
    )
    async with serve_mcp(app, host, port, sock=sock) as url:
        yield url
