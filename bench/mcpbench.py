"""What one MCP tool call costs the worker: `python -m bench.mcpbench`.

The demo MCP server (backend/tools/demo_server.py) served in this process, as `agentry dev`
serves it beside the worker; `calls` sequential `add` calls (BENCH_MCP_CALLS, 100), each way:
- shared session: `McpTools.call`, as the worker calls (one session per server, kept open);
- fresh session: a new SDK `Client` per call (discover, call, and the listing the SDK makes to
  validate the result), the alternative the shared session avoids.
Wall time and CPU time (this process: client and server) per call; median of
BENCH_MCP_ROUNDS (3) rounds. Needs no database: the shape of a `make bench` section
(`run`, `render`) without using the harness.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp import Client

from backend.tools.demo_server import serve_demo
from backend.tools.mcp import McpServer, McpTools
from bench.report import table


async def _timed(calls: int, call: Callable[[int], Awaitable[str]]) -> tuple[float, float]:
    for i in range(5):  # warm-up
        await call(i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        assert await call(i) == str(i + 1)
    return time.perf_counter() - wall, time.process_time() - cpu


async def run(_h: Any = None) -> dict[str, Any]:
    calls = int(os.environ.get("BENCH_MCP_CALLS", "100"))
    rounds = int(os.environ.get("BENCH_MCP_ROUNDS", "3"))
    rows: dict[str, list[tuple[float, float]]] = {"shared session": [], "fresh session": []}
    async with serve_demo() as url:
        tools = McpTools()
        demo = McpServer("demo", url)

        async def shared(i: int) -> str:
            result = await tools.call(demo, "add", {"a": i, "b": 1}, timeout=10)
            return result.output

        async def fresh(i: int) -> str:
            async with Client(url, cache=None) as client:
                result = await client.call_tool("add", {"a": i, "b": 1})
            return result.content[0].text  # type: ignore[union-attr]

        try:
            for _ in range(rounds):
                rows["shared session"].append(await _timed(calls, shared))
                rows["fresh session"].append(await _timed(calls, fresh))
        finally:
            await tools.aclose()
    return {
        "calls": calls,
        "rounds": rounds,
        "rows": {
            name: {
                "total_ms": statistics.median(w for w, _ in times) * 1000,
                "wall_ms_per_call": statistics.median(w for w, _ in times) * 1000 / calls,
                "cpu_ms_per_call": statistics.median(c for _, c in times) * 1000 / calls,
            }
            for name, times in rows.items()
        },
    }


def render(section: dict[str, Any]) -> str:
    head = f"{section['calls']} sequential calls to the demo MCP server, median of {section['rounds']} rounds"  # fmt: skip
    rows = [
        [name, r["total_ms"], r["wall_ms_per_call"], r["cpu_ms_per_call"]]
        for name, r in section["rows"].items()
    ]
    return head + "\n" + table(["", "total ms", "wall ms/call", "cpu ms/call"], rows)


if __name__ == "__main__":
    print(render(asyncio.run(run())))
