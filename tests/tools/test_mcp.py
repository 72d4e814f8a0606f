"""backend/tools/mcp.py against real MCP servers started by the tests (tests/tools/mcp_server.py):
discovery, its cache, calls and every way a server can fail."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from mcp.server import Server
from mcp_types import ListToolsResult, Tool

from backend.core import logging as app_logging
from backend.tools.demo_server import bind, serve_mcp
from backend.tools.mcp import McpServer, McpTools, ServerTool
from tests.tools.mcp_server import Recorded, serve_test_server, tool_names

TIMEOUT = 5.0
SECRET = "Bearer s3cret-value"


@pytest.fixture
async def tools() -> AsyncIterator[McpTools]:
    tools = McpTools()
    yield tools
    await tools.aclose()


@pytest.fixture
async def server() -> AsyncIterator[Recorded]:
    async with serve_test_server() as server:
        yield server


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The process's log output (ours and libraries'), as configured by the app, at DEBUG."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, app_logging._Output.handler, app_logging._Output.renderer
    config = structlog.get_config()
    app_logging.configure_logging("DEBUG", "json")
    stream = io.StringIO()
    assert app_logging._Output.handler is not None
    app_logging._Output.handler.setStream(stream)
    yield stream
    root.handlers[:], level, app_logging._Output.handler, app_logging._Output.renderer = saved
    root.setLevel(level)
    structlog.configure(**config)


def unused_port() -> int:
    with bind() as sock:
        return int(sock.getsockname()[1])


# -- discovery


async def test_discovery_offers_each_tool_as_server__tool(tools: McpTools, server: Recorded):
    offered = await tools.list_tools([McpServer("calc", server.url)], timeout=TIMEOUT)

    add = next(t for t in offered if t.offered_name == "calc__add")
    assert add == ServerTool(
        offered_name="calc__add",
        server="calc",
        tool="add",
        description="Add two integers.",
        input_schema=add.input_schema,
        needs_approval=False,
    )
    assert add.input_schema["properties"].keys() == {"a", "b"}
    assert add.input_schema["required"] == ["a", "b"]
    # "calc__dotted.name" breaks the providers' name rule: left out, the others offered.
    assert tool_names(offered) == {
        f"calc__{t}"
        for t in ("add", "slow", "boom", "rpc_error", "refuse", "structured", "picture")
    }


async def test_allowed_tools_limit_what_is_offered_and_called(tools: McpTools, server: Recorded):
    calc = McpServer("calc", server.url, allowed_tools=("add", "boom", "absent"))

    assert tool_names(await tools.list_tools([calc], timeout=TIMEOUT)) == {"calc__add", "calc__boom"}  # fmt: skip
    calls = server.count("tools/call")
    refused = await tools.call(calc, "refuse", {}, timeout=TIMEOUT)
    assert refused.is_error
    assert refused.output == "MCP server 'calc' does not offer tool 'refuse'"
    assert server.count("tools/call") == calls  # never sent


async def test_require_approval_marks_the_tools_that_need_a_person(
    tools: McpTools, server: Recorded
):
    servers = [
        McpServer("never", server.url, allowed_tools=("add", "boom")),
        McpServer("always", server.url, allowed_tools=("add", "boom"), require_approval="always"),
        McpServer("some", server.url, allowed_tools=("add", "boom"), require_approval=("boom",)),
    ]
    offered = await tools.list_tools(servers, timeout=TIMEOUT)

    assert {t.offered_name: t.needs_approval for t in offered} == {
        "never__add": False,
        "never__boom": False,
        "always__add": True,
        "always__boom": True,
        "some__add": False,
        "some__boom": True,
    }
    # One listing served all three: the cache is per (url, headers), not per name.
    assert server.count("tools/list") == 1


async def test_listing_is_cached_per_url_and_headers_for_cache_seconds(server: Recorded):
    cached = McpTools(cache_seconds=3600)
    try:
        for _ in range(3):
            await cached.list_tools([McpServer("a", server.url)], timeout=TIMEOUT)
        assert server.count("tools/list") == 1
        # Other headers, another listing (a server may show each caller other tools).
        other = McpServer("a", server.url, headers={"Authorization": "Bearer other"})
        await cached.list_tools([other], timeout=TIMEOUT)
        await cached.list_tools([other], timeout=TIMEOUT)
        assert server.count("tools/list") == 2
    finally:
        await cached.aclose()

    short = McpTools(cache_seconds=0.05)
    try:
        await short.list_tools([McpServer("a", server.url)], timeout=TIMEOUT)
        await asyncio.sleep(0.1)  # past the cache's life
        offered = await short.list_tools([McpServer("a", server.url)], timeout=TIMEOUT)
        assert "a__add" in tool_names(offered)
        assert server.count("tools/list") == 4
    finally:
        await short.aclose()


async def test_concurrent_discoveries_share_one_request(tools: McpTools, server: Recorded):
    calc = McpServer("calc", server.url)

    listings = await asyncio.gather(*(tools.list_tools([calc], timeout=TIMEOUT) for _ in range(5)))

    assert all(tool_names(listing) == tool_names(listings[0]) for listing in listings)
    assert "calc__add" in tool_names(listings[0])
    assert server.count("tools/list") == 1


async def test_a_server_down_at_discovery_gives_no_tools_and_is_asked_again(
    tools: McpTools, server: Recorded, log_lines: io.StringIO
):
    port = unused_port()
    down = McpServer("down", f"http://127.0.0.1:{port}/mcp", headers={"Authorization": SECRET})
    up = McpServer("up", server.url, allowed_tools=("add",))

    assert tool_names(await tools.list_tools([down, up], timeout=TIMEOUT)) == {"up__add"}

    # The failure was not cached: once the server is there, the next step sees its tools.
    async with serve_test_server(sock=bind(port=port)) as revived:
        offered = await tools.list_tools([down, up], timeout=TIMEOUT)
        assert "down__add" in tool_names(offered)
        assert {r.authorization for r in revived.requests} == {SECRET}

    failures = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    failures = [f for f in failures if f.get("event") == "mcp_discovery_failed"]
    assert failures == [failures[0]]
    assert failures[0]["server"] == "down"
    assert failures[0]["error"] == "ConnectError"
    assert "s3cret" not in log_lines.getvalue()


async def test_a_server_slow_to_list_gives_no_tools_within_the_timeout(tools: McpTools):
    async with serve_test_server(hold_list=True) as slow:
        offered = await tools.list_tools([McpServer("slow", slow.url)], timeout=0.5)

        assert offered == []
        assert slow.count("tools/list") == 1  # it was asked, and not waited for


# -- calls


async def test_call_output_is_the_text_contents(tools: McpTools, server: Recorded):
    calc = McpServer("calc", server.url)

    added = await tools.call(calc, "add", {"a": 2, "b": 40}, timeout=TIMEOUT)
    picture = await tools.call(calc, "picture", {}, timeout=TIMEOUT)
    structured = await tools.call(calc, "structured", {}, timeout=TIMEOUT)

    assert (added.output, added.is_error) == ("42", False)
    assert (picture.output, picture.is_error) == ("before\n[image/png]\nafter", False)
    # No text: the structured content, as JSON.
    assert json.loads(structured.output) == {"sum": 3, "unit": "€"}
    assert not structured.is_error


async def test_calls_share_one_session(tools: McpTools, server: Recorded):
    calc = McpServer("calc", server.url)
    await tools.list_tools([calc], timeout=TIMEOUT)
    before = len(server.requests)

    for i in range(5):
        assert (await tools.call(calc, "add", {"a": i, "b": 1}, timeout=TIMEOUT)).output == str(i + 1)  # fmt: skip

    # One request per call: no handshake, no listing, no session per call.
    assert [r.rpc_method for r in server.requests[before:]] == ["tools/call"] * 5


async def test_headers_are_sent_with_every_request(tools: McpTools):
    async with serve_test_server(require_auth=SECRET) as guarded:
        allowed = McpServer("g", guarded.url, headers={"Authorization": SECRET})
        offered = await tools.list_tools([allowed], timeout=TIMEOUT)
        result = await tools.call(allowed, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)

        assert "g__add" in tool_names(offered)
        assert result == result.__class__("3", False)
        assert {r.authorization for r in guarded.requests} == {SECRET}

        wrong = McpServer("g", guarded.url, headers={"Authorization": "Bearer wrong"})
        assert await tools.list_tools([wrong], timeout=TIMEOUT) == []
        refused = await tools.call(wrong, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)
        assert refused.is_error
        assert refused.output.startswith("MCP server 'g' ")
        assert "wrong" not in refused.output


async def test_an_unreachable_server_gives_an_error_result(tools: McpTools):
    down = McpServer("demo", f"http://127.0.0.1:{unused_port()}/mcp")

    result = await tools.call(down, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)

    assert result.is_error
    assert result.output == "MCP server 'demo' cannot be reached (ConnectError)"


async def test_a_slow_tool_gives_an_error_result_without_waiting_for_it(
    tools: McpTools, server: Recorded
):
    calc = McpServer("demo", server.url)

    result = await tools.call(calc, "slow", {}, timeout=0.5)

    assert result.is_error
    assert result.output == "MCP server 'demo' timed out after 0.5 s"
    assert (server.slow_started, server.slow_finished) == (1, 0)  # it was still running
    # The server is still usable.
    assert (await tools.call(calc, "add", {"a": 1, "b": 1}, timeout=TIMEOUT)).output == "2"


async def test_tool_errors_and_json_rpc_errors_give_error_results(
    tools: McpTools, server: Recorded
):
    calc = McpServer("calc", server.url)

    raised = await tools.call(calc, "boom", {}, timeout=TIMEOUT)
    refused = await tools.call(calc, "refuse", {}, timeout=TIMEOUT)
    rpc = await tools.call(calc, "rpc_error", {}, timeout=TIMEOUT)
    unknown = await tools.call(calc, "absent", {}, timeout=TIMEOUT)
    bad_arguments = await tools.call(calc, "add", {"a": "x"}, timeout=TIMEOUT)

    assert (raised.output, raised.is_error) == ("Error executing tool boom", True)
    assert (refused.output, refused.is_error) == ("not today", True)
    assert (rpc.output, rpc.is_error) == ("MCP server 'calc' answered an error: quota exhausted", True)  # fmt: skip
    assert unknown.is_error
    assert "absent" in unknown.output
    assert bad_arguments.is_error
    assert (await tools.call(calc, "add", {"a": 1, "b": 1}, timeout=TIMEOUT)).output == "2"


async def test_a_server_that_restarts_between_calls(tools: McpTools):
    port = unused_port()
    calc = McpServer("calc", f"http://127.0.0.1:{port}/mcp")
    async with serve_test_server(sock=bind(port=port)):
        assert (await tools.call(calc, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)).output == "3"

    down = await tools.call(calc, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)
    assert down.is_error
    assert down.output.startswith("MCP server 'calc' ")

    async with serve_test_server(sock=bind(port=port)):
        assert (await tools.call(calc, "add", {"a": 2, "b": 2}, timeout=TIMEOUT)).output == "4"


async def test_a_server_of_the_2025_protocol_gets_the_handshake_and_its_session_closed():
    tools = McpTools()
    async with serve_test_server(legacy=True) as old:
        calc = McpServer("calc", old.url)
        assert "calc__add" in tool_names(await tools.list_tools([calc], timeout=TIMEOUT))
        assert (await tools.call(calc, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)).output == "3"
        assert (await tools.call(calc, "add", {"a": 2, "b": 2}, timeout=TIMEOUT)).output == "4"
        await tools.aclose()

        assert [r.rpc_method or r.http_method for r in old.requests] == [
            "server/discover",  # refused: a 2025 server
            "initialize",
            "notifications/initialized",
            "GET",  # the session's stream, refused (405) by this server
            "tools/list",
            "tools/call",
            "tools/call",
            "DELETE",  # aclose ends the session
        ]


async def test_a_session_the_server_forgot_is_replaced_without_failing_the_call(
    tools: McpTools,
):
    port = unused_port()
    calc = McpServer("calc", f"http://127.0.0.1:{port}/mcp")
    async with serve_test_server(legacy=True, sock=bind(port=port)):
        assert (await tools.call(calc, "add", {"a": 1, "b": 2}, timeout=TIMEOUT)).output == "3"

    async with serve_test_server(legacy=True, sock=bind(port=port)) as restarted:
        result = await tools.call(calc, "add", {"a": 2, "b": 2}, timeout=TIMEOUT)

        assert (result.output, result.is_error) == ("4", False)
        calls = [r for r in restarted.requests if r.rpc_method == "tools/call"]
        assert len(calls) == 2  # refused for its unknown session, then done on a new one


async def test_aclose_ends_every_session(server: Recorded):
    tools = McpTools()
    for name in ("a", "b"):
        await tools.call(McpServer(name, server.url, {"X-Caller": name}), "add", {"a": 1, "b": 1}, timeout=TIMEOUT)  # fmt: skip

    await tools.aclose()

    held = [t for t in asyncio.all_tasks() if "_Session._hold" in repr(t.get_coro())]
    assert held == []


async def test_a_listing_in_pages_is_read_whole(tools: McpTools):
    def tool(name: str) -> Tool:
        return Tool(name=name, description=name, input_schema={"type": "object"})

    pages = {None: (["one", "two"], "p2"), "p2": (["three"], "p3"), "p3": (["four"], None)}

    async def list_tools(ctx: object, params: object) -> ListToolsResult:
        names, next_cursor = pages[getattr(params, "cursor", None)]
        return ListToolsResult(tools=[tool(n) for n in names], next_cursor=next_cursor)

    paged = Server("paged", on_list_tools=list_tools)
    async with serve_mcp(paged.streamable_http_app()) as url:
        offered = await tools.list_tools([McpServer("p", url)], timeout=TIMEOUT)

    assert [t.offered_name for t in offered] == ["p__one", "p__two", "p__three", "p__four"]


async def test_an_idle_session_is_closed(monkeypatch: pytest.MonkeyPatch, tools: McpTools):
    monkeypatch.setattr("backend.tools.mcp._IDLE_SECONDS", 0.0)
    async with serve_test_server(legacy=True) as old:
        await tools.call(McpServer("a", old.url), "add", {"a": 1, "b": 1}, timeout=TIMEOUT)
        assert old.count("initialize") == 1
        assert [r.http_method for r in old.requests].count("DELETE") == 0

        # Any later use of the client closes the sessions idle for longer than _IDLE_SECONDS.
        await tools.call(McpServer("a", old.url, {"X": "other"}), "add", {"a": 1, "b": 1}, timeout=TIMEOUT)  # fmt: skip
        for _ in range(100):  # the DELETE is sent by the closing session's task
            if any(r.http_method == "DELETE" for r in old.requests):
                break
            await asyncio.sleep(0.05)

        assert old.count("initialize") == 2
        assert [r.http_method for r in old.requests].count("DELETE") == 1
