"""Entry point of every server subprocess: `python -m bench.serve <kind> <port>`.

Kinds: `agentry` (create_app(Settings()) from the environment), `constant` and `pkread`
(the reference apps), `raw` (a bare uvloop protocol answering a constant, used only to show
the load generator's own ceiling), `mcp-demo` (our demo MCP server, backend/tools/demo_server.py,
at http://127.0.0.1:<port>/mcp, as `agentry dev` serves it). The three FastAPI apps share
UVICORN_OPTIONS, which mirror `agentry dev|api` (backend/cli.py `_serve`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

HOST = "127.0.0.1"
# As backend/cli.py _serve: loop and http left at "auto" (uvloop, httptools when installed),
# log_config=None (the app configures logging), proxy headers on, one process.
UVICORN_OPTIONS: dict[str, Any] = {"log_config": None, "proxy_headers": True}


def resolved_uvicorn_impl() -> dict[str, str]:
    """What uvicorn's "auto" loop and http resolve to in this environment."""
    import importlib.util

    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    return {
        "loop": "uvloop" if has("uvloop") else "asyncio",
        "http": "httptools" if has("httptools") else "h11",
    }


def _app(kind: str) -> Any:
    if kind == "agentry":
        from backend.config import Settings
        from backend.main import create_app

        return create_app(Settings())
    if kind == "constant":
        from bench.refapps import constant_app

        return constant_app()
    if kind == "pkread":
        from bench.refapps import pk_read_app

        return pk_read_app(os.environ["BENCH_PK_DSN"], int(os.environ["BENCH_PK_POOL"]))
    raise SystemExit(f"unknown server kind {kind!r}")


_RAW_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)


class _RawProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        count = data.count(b"\r\n\r\n")  # GETs without bodies: one request per header block
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if count else data
        if count:
            self.transport.write(_RAW_RESPONSE * count)  # type: ignore[attr-defined]


async def _serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RawProtocol, HOST, port)
    async with server:
        await server.serve_forever()


async def _serve_mcp_demo(port: int) -> None:
    from backend.tools.demo_server import serve_demo

    async with serve_demo(HOST, port):
        await asyncio.Event().wait()  # until SIGTERM ends the process


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind in ("raw", "mcp-demo"):
        import uvloop

        uvloop.run(_serve_raw(port) if kind == "raw" else _serve_mcp_demo(port))
        return
    import uvicorn

    uvicorn.Server(uvicorn.Config(_app(kind), host=HOST, port=port, **UVICORN_OPTIONS)).run()


if __name__ == "__main__":
    main()
