"""A run waiting for an action (API.md "Required actions"): cancel, terminate, project deletion
and pause while it waits; its SSE stream stays open; `?wait` answers once it waits; the
WebSocket answers it as the endpoints do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from websockets.asyncio.client import connect

from backend.runs import streams
from backend.runs.models import Run
from tests.runs.conftest import World, eventually, run_worker
from tests.runs.parking import Parker
from tests.runs.test_required_actions import OUTPUT, outputs_url, post, queued_jobs, step_rows


async def test_cancelling_a_waiting_run_frees_its_agent_for_the_next_run(
    world: World, parker: Parker, app
) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    following = await world.submit(agent)  # waits behind it: the agent keeps its turn
    assert f"run:{following['id']}:0" not in await queued_jobs(app)

    r = await world.client.post(world.run_url(run["id"]) + "/cancel", headers=world.owner.headers)

    assert r.status_code == 200, r.text
    cancelled = await world.run(run["id"])
    assert (cancelled["status"], cancelled["required_action"]) == ("cancelled", None)
    assert cancelled["finished_at"] is not None
    assert (await world.agent_row(agent)).status == "idle"
    assert f"run:{following['id']}:0" in await queued_jobs(app)
    events = [e for e, _ in await _stream(app, run["id"])]
    assert events[-3:] == ["usage", "status", "end"]
    # Answering it now is too late.
    assert (await post(world, outputs_url(world, run["id"]), OUTPUT)).status_code == 409


async def test_terminating_the_agent_cancels_its_waiting_run(world: World, parker: Parker) -> None:
    agent = await world.agent()
    run = await parker.park(agent)

    url = world.runs_url(agent).removesuffix("/runs")
    r = await world.client.delete(url, headers=world.owner.headers)

    assert r.status_code == 200, r.text
    ended = await world.run(run["id"])
    assert ended["status"] == "cancelled"
    assert ended["error"] == {"code": "cancelled", "message": "agent terminated"}
    assert (await world.agent_row(agent)).status == "terminated"


async def test_deleting_the_project_cancels_its_waiting_runs(world: World, parker: Parker) -> None:
    agent = await world.agent()
    run = await parker.park(agent)

    r = await world.client.delete(
        f"/api/v1/projects/{world.project.id}", headers=world.owner.headers
    )

    assert r.status_code == 204
    status = await world.db.scalar(
        select(Run.status).where(Run.id == run["id"]).execution_options(populate_existing=True)
    )
    assert status == "cancelled"


async def test_pause_keeps_the_run_waiting_and_an_answer_waits_for_resume(
    world: World, parker: Parker, app, worker_settings
) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    agent_url = world.runs_url(agent).removesuffix("/runs")

    paused = await world.client.post(agent_url + "/pause", headers=world.owner.headers)
    assert paused.json()["status"] == "paused"
    assert (await world.run(run["id"]))["status"] == "requires_action"

    answered = await post(world, outputs_url(world, run["id"]), OUTPUT)
    assert answered.json()["status"] == "queued"
    assert (await world.agent_row(agent)).status == "paused"
    assert f"run:{run['id']}:1" not in await queued_jobs(app)  # nothing to start while paused

    resumed = await world.client.post(agent_url + "/resume", headers=world.owner.headers)
    assert resumed.json()["status"] == "idle"
    assert f"run:{run['id']}:1" in await queued_jobs(app)
    worker = await run_worker(worker_settings)
    try:
        done = await world.finished(run["id"])
    finally:
        await worker.close()
    assert done["status"] == "succeeded"
    assert done["output"] == "echo: gamma is 3"  # the model step after the tool step
    assert done["attempt"] == 2  # the resume after the answer is a claim
    assert done["steps"] == 3


# --- streams -----------------------------------------------------------------------------------


async def _stream(app, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    entries = await app.state.redis.xrange(streams.events_key(run_id))
    return [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in entries]


async def _sse_lines(
    server: str, world: World, run_id: str
) -> AsyncIterator[tuple[str | None, Any]]:
    """(event name, data) per event, (None, None) per keep-alive, as they arrive."""
    url = f"http://{server}{world.run_url(run_id)}/events"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, headers=world.owner.headers) as response,
    ):
        assert response.status_code == 200
        name = None
        async for line in response.aiter_lines():
            if line.startswith(":"):
                yield None, None
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield name, json.loads(line.removeprefix("data: "))


async def test_the_event_stream_stays_open_while_the_run_waits(
    world: World, parker: Parker, app, server: str, monkeypatch
) -> None:
    monkeypatch.setattr(app.state.settings, "SSE_KEEPALIVE_SECONDS", 0.05)
    monkeypatch.setattr(streams, "DB_CHECK_SECONDS", 0.02)  # it re-reads the run often
    agent = await world.agent()
    run = await parker.park(agent)
    seen: list[str | None] = []

    async with asyncio.timeout(20):
        lines = _sse_lines(server, world, run["id"])
        async for name, _ in lines:
            seen.append(name)
            if seen.count(None) >= 10:  # many database checks later, still open
                break
        assert (await post(world, outputs_url(world, run["id"]), OUTPUT)).status_code == 200
        async for name, data in lines:
            seen.append(name)
            if name == "status" and data == {"status": "queued"}:
                break
        cancel = world.run_url(run["id"]) + "/cancel"
        await world.client.post(cancel, headers=world.owner.headers)
        async for name, data in lines:
            seen.append(name)
            if name == "end":
                assert data["status"] == "cancelled"
                break

    events = [name for name in seen if name is not None]
    assert events == [
        "status", "status", "requires_action", "tool_result", "status", "usage", "status", "end",
    ]  # fmt: skip


async def test_a_wait_answers_once_the_run_waits_for_an_action(
    world: World, parker: Parker
) -> None:
    agent = await world.agent()
    waiting = asyncio.create_task(
        world.client.post(
            world.runs_url(agent),
            params={"wait": 60},
            json={"input": "look it up"},
            headers=world.owner.headers,
        )
    )

    async def submitted() -> Any:
        async with world.sessions() as session:
            return await session.scalar(select(Run.id).where(Run.agent_id == agent.id))

    run_id = await eventually(submitted)
    await parker.park(agent, run_id=str(run_id))
    r = await asyncio.wait_for(waiting, timeout=20)

    assert r.status_code == 202
    assert r.json()["status"] == "requires_action"
    assert r.json()["required_action"]["tool_calls"][0]["name"] == "lookup"


# --- WebSocket ---------------------------------------------------------------------------------


async def _next(ws) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))


async def test_the_websocket_answers_a_required_action(
    world: World, parker: Parker, server: str
) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"

    async with connect(f"{url}?access_token={token}") as ws:
        await ws.send(json.dumps({"run_id": run["id"], **OUTPUT}))
        result, queued = await _next(ws), await _next(ws)
        await world.client.post(world.run_url(run["id"]) + "/cancel", headers=world.owner.headers)
        tail = [await _next(ws) for _ in range(3)]

    # Only what follows the answer: the run's earlier events were not this socket's.
    assert result["event"] == "tool_result"
    assert result["data"] == {"tool_call_id": "call_0_0", "output": "gamma is 3", "is_error": False}
    assert result["run_id"] == run["id"]
    assert (queued["event"], queued["data"]) == ("status", {"status": "queued"})
    assert [m["event"] for m in tail] == ["usage", "status", "end"]
    assert len(await step_rows(world, run["id"])) == 2


async def test_the_websocket_answers_approvals_and_refuses_wrong_answers(
    world: World, parker: Parker, server: str
) -> None:
    agent = await world.agent()
    run = await parker.park(agent, kind="approve_tool_calls")
    elsewhere = await parker.park(await world.agent())
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"
    deny = {"decisions": [{"tool_call_id": "call_0_0", "approve": False, "message": "no"}]}

    async with connect(f"{url}?access_token={token}") as ws:
        errors = []
        for message in (
            {"run_id": run["id"], **OUTPUT},  # the wrong kind of answer
            {"run_id": run["id"], "decisions": [{"tool_call_id": "x", "approve": True}]},
            {"run_id": elsewhere["id"], **OUTPUT},  # another agent's run
            {"run_id": run["id"], "decisions": [{"tool_call_id": "call_0_0"}]},
        ):
            await ws.send(json.dumps(message))
            errors.append(await _next(ws))
        await ws.send(json.dumps({"run_id": run["id"], **deny}))
        result, queued = await _next(ws), await _next(ws)

    assert [(e["event"], e["data"]["code"]) for e in errors] == [
        ("error", "invalid_transition"),
        ("error", "validation_error"),
        ("error", "not_found"),
        ("error", "validation_error"),
    ]
    assert "decisions" in errors[1]["data"]["message"]
    assert result["data"] == {"tool_call_id": "call_0_0", "output": "denied: no", "is_error": True}
    assert queued["data"] == {"status": "queued"}
    assert (await world.run(elsewhere["id"]))["status"] == "requires_action"
