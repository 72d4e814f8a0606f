"""The demo MCP server `agentry dev` serves, through our client."""

from __future__ import annotations

import logging

from backend.tools.demo_server import demo_server, serve_demo
from backend.tools.mcp import McpServer, McpTools
from tests.tools.mcp_server import tool_names


async def test_demo_server_adds_and_counts_words():
    tools = McpTools()
    try:
        async with serve_demo() as url:
            demo = McpServer("demo", url)
            offered = await tools.list_tools([demo], timeout=5)

            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/mcp")
            assert tool_names(offered) == {"demo__add", "demo__word_count"}
            add = next(t for t in offered if t.tool == "add")
            assert add.input_schema["properties"]["a"]["type"] == "number"
            for tool, arguments, output in [
                ("add", {"a": 1, "b": 2}, "3"),
                ("add", {"a": 2, "b": 0.5}, "2.5"),
                ("word_count", {"text": "the quick  brown\nfox"}, "4"),
                ("word_count", {"text": ""}, "0"),
            ]:
                result = await tools.call(demo, tool, arguments, timeout=5)
                assert (result.output, result.is_error) == (output, False), tool
    finally:
        await tools.aclose()


def test_building_a_server_leaves_the_process_logging_alone():
    root = logging.getLogger()
    before = root.handlers[:], root.level
    root.handlers[:] = []  # MCPServer() installs its own handler on a root that has none
    try:
        demo_server()
        assert (root.handlers, root.level) == ([], before[1])
    finally:
        root.handlers[:] = before[0]
