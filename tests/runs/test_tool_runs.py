"""Runs that act, executed by the real worker: model and tool steps against a real MCP server
(the demo server, started by the test), each committed as it ends; usage per model step;
budgets and max_steps between steps; the conversation carrying tool calls and results."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from backend.projects.models import Project
from backend.runs.models import ConversationMessage, ProviderCall, Run, RunStep
from backend.tools.demo_server import serve_demo
from tests.runs.conftest import World
from tests.runs.test_runs_streaming import parse_sse, sse

LOOKUP = {"name": "lookup", "description": "Look a thing up", "input_schema": {"type": "object"}}


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    async with serve_demo() as url:
        yield url


def _server(url: str, **fields: Any) -> dict[str, Any]:
    return {"name": "demo", "url": url, "headers": {}, "allowed_tools": None} | fields


def _add(a: float, b: float) -> dict[str, Any]:
    return {"tool_calls": [{"name": "demo__add", "arguments": {"a": a, "b": b}}]}


async def _tool_agent(world: World, url: str, script: list[dict], **fields: Any) -> Any:
    agent_type = await world.agent_type(
        config={"script": script, "chunks": 2}, mcp_servers=[_server(url)], **fields
    )
    return await world.agent(agent_type)


async def _steps(world: World, run_id: str) -> list[RunStep]:
    query = select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.index)
    return list(await world.db.scalars(query.execution_options(populate_existing=True)))


async def _usage_by_step(world: World, run_id: str) -> dict[int, tuple[int, int]]:
    pc = ProviderCall
    rows = await world.db.execute(
        select(pc.step, func.sum(pc.input_tokens), func.sum(pc.output_tokens))
        .where(pc.run_id == run_id)
        .group_by(pc.step)
    )
    return {step: (int(i), int(o)) for step, i, o in rows}


async def test_a_model_step_calls_an_mcp_tool_then_answers(
    world: World, worker, demo_url: str
) -> None:
    agent = await _tool_agent(world, demo_url, [_add(2, 3)])
    submitted = await world.submit(agent, "add these")
    run = await world.finished(submitted["id"])

    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == "echo: 5"
    steps = await _steps(world, run["id"])
    assert await world.db.scalar(select(Run.steps).where(Run.id == run["id"])) == 3
    assert [(s.index, s.kind, s.status) for s in steps] == [
        (0, "model", "succeeded"),
        (1, "tool", "succeeded"),
        (2, "model", "succeeded"),
    ]
    call = steps[0].tool_calls[0]
    assert call == {"id": call["id"], "name": "demo__add", "arguments": {"a": 2, "b": 3}}
    tool = steps[1]
    assert (tool.tool_call_id, tool.name, tool.executor) == (call["id"], "demo__add", "server")
    assert (tool.output, tool.is_error, tool.arguments) == ("5", False, {"a": 2, "b": 3})
    assert (steps[2].text, steps[2].tool_calls) == ("echo: 5", [])
    # fake usage: step 0 = words("be brief" + "add these") in, 10 per call out;
    # step 2 = words("be brief" + "5") in, words("echo: 5") out
    assert await _usage_by_step(world, run["id"]) == {0: (4, 10), 2: (3, 2)}
    assert (run["usage"]["input_tokens"], run["usage"]["output_tokens"]) == (7, 12)
    row = await world.agent_row(agent)
    assert (row.status, row.tasks_completed, row.tokens_used) == ("idle", 1, 19)

    events, _ = parse_sse((await sse(world, run["id"])).text)
    names = [e["event"] for e in events if e["event"] != "delta"]
    assert names[:5] == ["status", "status", "usage", "tool_call", "tool_result"]
    assert names[-3:] == ["usage", "status", "end"]
    by_name = {e["event"]: e["data"] for e in events}
    assert by_name["tool_call"] == call | {"executor": "server"}
    assert by_name["tool_result"] == {"tool_call_id": call["id"], "output": "5", "is_error": False}


async def test_the_conversation_carries_tool_calls_and_results(
    world: World, worker, demo_url: str
) -> None:
    agent = await _tool_agent(world, demo_url, [_add(1, 1)])
    first = await world.finished((await world.submit(agent, "one"))["id"])
    second = await world.finished((await world.submit(agent, "two"))["id"])
    assert (first["status"], second["status"]) == ("succeeded", "succeeded")

    rows = (
        await world.db.execute(
            select(
                ConversationMessage.role,
                ConversationMessage.content,
                ConversationMessage.tool_calls,
                ConversationMessage.tool_call_id,
            )
            .where(ConversationMessage.agent_id == agent.id)
            .order_by(ConversationMessage.seq)
        )
    ).all()
    roles = [(role, content) for role, content, _, _ in rows]
    assert roles == [
        *[("user", "one"), ("assistant", ""), ("tool", "2"), ("assistant", "echo: 2")],
        *[("user", "two"), ("assistant", ""), ("tool", "2"), ("assistant", "echo: 2")],
    ]
    call_id = rows[1].tool_calls[0]["id"]
    assert rows[1].tool_calls[0]["name"] == "demo__add"
    assert rows[2].tool_call_id == call_id


async def test_max_steps_ends_the_run_keeping_its_usage(
    world: World, worker, demo_url: str
) -> None:
    agent = await _tool_agent(world, demo_url, [_add(1, 2)] * 5, max_steps=2)
    run = await world.finished((await world.submit(agent, "loop"))["id"])

    assert run["status"] == "failed"
    assert run["error"]["code"] == "max_steps_exceeded"
    steps = await _steps(world, run["id"])
    assert [s.kind for s in steps] == ["model", "tool", "model", "tool"]
    by_step = await _usage_by_step(world, run["id"])
    assert sorted(by_step) == [0, 2]
    assert run["usage"]["total_tokens"] == sum(i + o for i, o in by_step.values())
    assert (await world.agent_row(agent)).status == "idle"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


async def test_an_unreachable_mcp_server_gives_the_model_an_error_result(
    world: World, worker
) -> None:
    agent = await _tool_agent(world, _closed_port_url(), [_add(1, 2)], tool_timeout_seconds=2)
    run = await world.finished((await world.submit(agent, "try"))["id"])

    assert run["status"] == "succeeded", run["error"]
    steps = await _steps(world, run["id"])
    assert [(s.kind, s.status) for s in steps] == [
        ("model", "succeeded"),
        ("tool", "failed"),
        ("model", "succeeded"),
    ]
    assert steps[1].is_error is True
    assert "demo" in steps[1].output
    assert run["output"] == "echo: " + steps[1].output


async def test_the_budget_is_checked_before_every_model_step(
    world: World, worker, demo_url: str
) -> None:
    await world.db.execute(
        update(Project).where(Project.id == world.project.id).values(monthly_token_limit=10)
    )
    await world.db.commit()
    agent = await _tool_agent(world, demo_url, [_add(2, 2)])
    run = await world.finished((await world.submit(agent, "spend"))["id"])

    assert run["status"] == "failed"
    assert run["error"]["code"] == "budget_exceeded"
    # the first model step (3 in, 10 out) crossed the limit; its tool step still ran
    assert run["usage"]["total_tokens"] == 13
    assert [s.kind for s in await _steps(world, run["id"])] == ["model", "tool"]
