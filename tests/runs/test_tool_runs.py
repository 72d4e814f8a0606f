"""Runs that act, executed by the real worker: model and tool steps against a real MCP server
(the demo server, started by the test), each committed as it ends; usage per model step;
budgets and max_steps between steps; the conversation carrying tool calls and results."""

from __future__ import annotations

import json
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import respx
from pydantic import SecretStr
from sqlalchemy import func, select, update

from backend.config import Settings
from backend.projects.models import Project
from backend.runs import pipeline
from backend.runs import steps as steps_module
from backend.runs.models import ConversationMessage, ProviderCall, Run, RunStep
from backend.tools.demo_server import serve_demo
from backend.usage import service as usage_service
from backend.usage.tokens import Usage
from backend.worker import run_worker
from tests.runs.conftest import World, eventually, spawn_worker_process
from tests.runs.providers.conftest import OPENAI_URL  # registers respx's httpx2 mocker
from tests.runs.providers.test_provider_openai import (
    answer,
    finish,
    stream_response,
    tool_delta,
    tool_finish,
)
from tests.runs.test_runs_streaming import parse_sse, sse
from tests.tools.mcp_server import serve_test_server

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


async def test_slow_and_erroring_tools_give_error_results_and_the_run_goes_on(
    world: World, worker
) -> None:
    async with serve_test_server() as server:
        calls = [{"name": "test__slow"}, {"name": "test__boom"}, {"name": "test__rpc_error"}]
        agent_type = await world.agent_type(
            config={"script": [{"tool_calls": calls}]},
            mcp_servers=[_server(server.url, name="test")],
            tool_timeout_seconds=1,
        )
        agent = await world.agent(agent_type)
        run = await world.finished((await world.submit(agent, "misbehave"))["id"], timeout=20)
        server.release.set()

    assert run["status"] == "succeeded", run["error"]
    tools = [s for s in await _steps(world, run["id"]) if s.kind == "tool"]
    assert [(s.name, s.is_error, s.status) for s in tools] == [
        ("test__slow", True, "failed"),
        ("test__boom", True, "failed"),
        ("test__rpc_error", True, "failed"),
    ]
    assert "timed out" in tools[0].output
    assert "boom" in tools[1].output
    assert "quota exhausted" in tools[2].output
    assert run["output"] == "echo: " + "\n".join(s.output for s in tools)


@pytest.mark.slow
async def test_a_worker_killed_mid_run_resumes_from_the_last_committed_step(
    world: World, settings: Settings, worker_settings: Settings, tmp_path: Path
) -> None:
    async with serve_test_server() as server:
        agent_type = await world.agent_type(
            config={"script": [{"tool_calls": [{"name": "test__slow"}]}]},
            mcp_servers=[_server(server.url, name="test")],
            timeout_seconds=4,
        )
        agent = await world.agent(agent_type)
        process = spawn_worker_process(settings, tmp_path / "worker.log")
        try:
            run_id = (await world.submit(agent, "survive"))["id"]

            async def calling() -> bool:
                return server.slow_started == 1

            await eventually(calling, timeout=30)  # model step 0 committed, its tool in flight
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        survivor = await run_worker(worker_settings)  # its reaper retries, then it resumes
        try:

            async def repeated() -> bool:
                return server.slow_started == 2

            await eventually(repeated, timeout=15)  # only the step in flight is repeated
            server.release.set()
            run = await world.finished(run_id, timeout=15)
        finally:
            await survivor.close()

    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == "echo: finally"
    assert run["attempt"] == 2
    steps = await _steps(world, run_id)
    assert [(s.index, s.kind, s.attempt) for s in steps] == [
        (0, "model", 1),
        (1, "tool", 2),
        (2, "model", 2),
    ]
    calls = (
        await world.db.execute(
            select(ProviderCall.step, ProviderCall.attempt).where(ProviderCall.run_id == run_id)
        )
    ).all()
    assert sorted(calls) == [(0, 1), (2, 2)]  # no model step counted twice
    row = await world.agent_row(agent)
    assert row.tokens_used == await world.calls_tokens(agent) == run["usage"]["total_tokens"]


async def test_an_openai_agent_calls_a_tool_and_its_next_run_gets_the_exchange(
    world: World, worker_settings: Settings, demo_url: str
) -> None:
    call = tool_delta(0, call_id="call_abc", name="demo__add", args='{"a": 2, ') + tool_delta(
        0, args='"b": 3}'
    )
    api = respx.mock(using="httpx2", assert_all_called=True)
    route = api.post(f"{OPENAI_URL}/chat/completions").mock(
        side_effect=[
            stream_response(call + tool_finish()),
            stream_response(answer("It is 5.") + finish()),
            stream_response(answer("Still 5.") + finish()),
        ]
    )
    api.route(host="127.0.0.1").pass_through()  # the MCP server is real
    agent_type = await world.agent_type(
        provider="openai",
        model="gpt-test-mini",
        pricing={"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"},
        mcp_servers=[_server(demo_url)],
    )
    agent = await world.agent(agent_type)
    settings = worker_settings.model_copy(
        update={"OPENAI_BASE_URL": OPENAI_URL, "OPENAI_API_KEY": SecretStr("sk-test")}
    )
    with api:
        worker = await run_worker(settings)
        try:
            first = await world.finished((await world.submit(agent, "2 + 3?"))["id"])
            second = await world.finished((await world.submit(agent, "and now?"))["id"])
        finally:
            await worker.close()
        bodies = [json.loads(c.request.content) for c in route.calls]  # reset on exit

    assert (first["status"], first["output"]) == ("succeeded", "It is 5."), first["error"]
    assert second["status"] == "succeeded"
    offered = [t["function"]["name"] for t in bodies[0]["tools"]]
    assert offered == ["demo__add", "demo__word_count"]
    exchange = [
        {"role": "user", "content": "2 + 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "demo__add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "5"},
    ]
    assert bodies[1]["messages"][1:] == exchange
    # the next run's history: the first run's whole exchange, then its input
    assert bodies[2]["messages"][1:] == [
        *exchange,
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "and now?"},
    ]


async def _status_of(world: World, run_id: str) -> str | None:
    async with world.sessions() as session:
        return await session.scalar(select(Run.status).where(Run.id == run_id))


async def test_a_run_waiting_for_an_action_holds_no_worker_keeps_the_turn_and_expires(
    world: World, worker
) -> None:
    lookup = {"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}]}
    agent_type = await world.agent_type(
        config={"script": [lookup]}, tools=[LOOKUP], action_timeout_seconds=1
    )
    agent = await world.agent(agent_type)
    first = (await world.submit(agent, "ask"))["id"]
    second = (await world.submit(agent, "next"))["id"]

    async def waiting() -> bool:
        return await _status_of(world, first) == "requires_action"

    await eventually(waiting)
    run = await world.db.scalar(
        select(Run).where(Run.id == first).execution_options(populate_existing=True)
    )
    assert run is not None
    assert run.worker_id is None
    assert run.required_action is not None
    assert run.required_action["type"] == "submit_tool_outputs"
    assert [c["name"] for c in run.required_action["tool_calls"]] == ["lookup"]
    assert (await world.agent_row(agent)).status == "waiting"
    assert worker.ctx["runs"].held == set()  # no worker holds it
    assert await _status_of(world, second) == "queued"  # it keeps its agent's turn

    ended = await world.finished(first, timeout=10)  # the reaper expires it
    assert ended["status"] == "failed"
    assert ended["error"]["code"] == "action_expired"
    await world.finished(second, timeout=10)  # it waits for its own answer, and expires too
    first_ended = await world.db.scalar(select(Run.finished_at).where(Run.id == first))
    second_started = await world.db.scalar(select(Run.started_at).where(Run.id == second))
    assert first_ended is not None
    assert second_started is not None
    assert second_started >= first_ended  # only after the first one ended


async def _waiting(world: World, run_id: str) -> dict[str, Any]:
    async def parked() -> bool:
        return await _status_of(world, run_id) == "requires_action"

    await eventually(parked)
    return await world.run(run_id)


async def _answer(world: World, run_id: str, endpoint: str, body: dict) -> dict[str, Any]:
    response = await world.client.post(
        f"{world.run_url(run_id)}/{endpoint}", json=body, headers=world.owner.headers
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_mcp_tool_then_a_client_tool_then_the_answer(
    world: World, worker, demo_url: str
) -> None:
    lookup = {"tool_calls": [{"name": "lookup", "arguments": {"q": "weather"}}]}
    agent = await _tool_agent(world, demo_url, [_add(2, 3), lookup], tools=[LOOKUP])
    run_id = (await world.submit(agent, "plan it"))["id"]

    waiting = await _waiting(world, run_id)
    action = waiting["required_action"]
    assert action["type"] == "submit_tool_outputs"
    assert [(c["name"], c["arguments"]) for c in action["tool_calls"]] == [
        ("lookup", {"q": "weather"})
    ]
    assert waiting["steps"] == 3
    assert (await world.agent_row(agent)).status == "waiting"
    call_id = action["tool_calls"][0]["id"]

    answered = await _answer(
        world,
        run_id,
        "tool-outputs",
        {"tool_outputs": [{"tool_call_id": call_id, "output": "sunny"}]},
    )
    assert answered["status"] == "queued"
    run = await world.finished(run_id)

    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == "echo: sunny"
    page = await world.client.get(f"{world.run_url(run_id)}/steps", headers=world.owner.headers)
    steps = page.json()["data"]
    assert [(s["index"], s["kind"], s.get("executor"), s["status"]) for s in steps] == [
        (0, "model", None, "succeeded"),
        (1, "tool", "server", "succeeded"),
        (2, "model", None, "succeeded"),
        (3, "tool", "client", "succeeded"),
        (4, "model", None, "succeeded"),
    ]
    assert [s["output"] for s in steps if s["kind"] == "tool"] == ["5", "sunny"]
    model_usage = [s["usage"]["total_tokens"] for s in steps if s["kind"] == "model"]
    assert run["usage"]["total_tokens"] == sum(model_usage)
    metrics = await world.client.get(
        f"/api/v1/projects/{world.project.id}/metrics", headers=world.owner.headers
    )
    assert metrics.json()["totals"]["total_tokens"] == run["usage"]["total_tokens"]
    assert run["attempt"] == 2  # resumed by a second claim after the answer
    assert (await world.agent_row(agent)).status == "idle"

    events, _ = parse_sse((await sse(world, run_id)).text)
    flow = [
        e["data"]["status"] if e["event"] == "status" else e["event"]
        for e in events
        if e["event"] not in ("delta", "usage")
    ]
    assert flow == [
        "queued",
        "running",
        "tool_call",
        "tool_result",
        "tool_call",
        "requires_action",
        "requires_action",
        "tool_result",
        "queued",
        "running",
        "succeeded",
        "end",
    ]


@pytest.mark.parametrize(
    ("approve", "output"), [(True, "echo: 5"), (False, "echo: denied: not now")]
)
async def test_approval_runs_or_denies_a_server_tool(
    world: World, worker, demo_url: str, approve: bool, output: str
) -> None:
    agent_type = await world.agent_type(
        config={"script": [_add(2, 3)]},
        mcp_servers=[_server(demo_url, require_approval=["add"])],
    )
    agent = await world.agent(agent_type)
    run_id = (await world.submit(agent, "may I"))["id"]

    action = (await _waiting(world, run_id))["required_action"]
    assert action["type"] == "approve_tool_calls"
    call_id = action["tool_calls"][0]["id"]
    decision = {"tool_call_id": call_id, "approve": approve, "message": "not now"}
    await _answer(world, run_id, "approvals", {"decisions": [decision]})
    run = await world.finished(run_id)

    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == output
    tool = [s for s in await _steps(world, run_id) if s.kind == "tool"]
    assert len(tool) == 1
    assert tool[0].is_error is (not approve)
    assert tool[0].approval["approved"] is approve
    assert tool[0].approval["actor_user_id"] == str(world.owner.user.id)
    audit = await world.client.get(
        f"/api/v1/projects/{world.project.id}/audit-log", headers=world.owner.headers
    )
    actions = [(e["action"], e["actor_user_id"]) for e in audit.json()["data"]]
    assert ("run.approval", str(world.owner.user.id)) in actions


async def test_a_step_that_ends_after_its_run_was_cancelled_is_kept_and_stops_the_attempt(
    world: World, settings: Settings, app
) -> None:
    """The checkpoint of a model step that finished after the run was cancelled: its calls are
    counted and its row kept (usage = the sum of model steps), but the attempt is told to stop."""
    agent = await world.agent()
    run_id = (await world.submit(agent, "soon cancelled"))["id"]
    db = await pipeline.Pipeline.connect(settings, "test:cancelled")
    try:
        claimed = await db.claim(uuid.UUID(run_id), 0)
        assert claimed is not None
        cancel = await world.client.post(
            f"{world.run_url(run_id)}/cancel", headers=world.owner.headers
        )
        assert cancel.json()["status"] == "cancelled"
        job = {"run_id": run_id, "agent_id": agent.id, "j_worker": "test:cancelled"}
        job |= {"j_attempt": 1, "j_provider": "fake"}
        calls = usage_service.priced_calls(
            uuid.UUID(run_id),
            "fake",
            [("fake-echo", Usage(input_tokens=3, output_tokens=10), True, None, 0)],
            at=datetime.now(UTC),
        )
        step = steps_module.row(run_id, 0, "model", "succeeded", 1, text="", tool_calls=[])
        row = await db.conclude(pipeline.Conclusion.step, job, calls, [step])
    finally:
        await db.close()

    assert row is not None
    assert row["stepped"] is False  # the attempt stops
    run = await world.run(run_id)
    assert (run["status"], run["usage"]["total_tokens"], run["steps"]) == ("cancelled", 13, 1)
    assert [s.kind for s in await _steps(world, run_id)] == ["model"]
