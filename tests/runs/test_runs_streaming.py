"""Run event streams: SSE (replay, resume, synthesized history, keep-alive, query-token auth)
and the agent WebSocket against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.projects.models import Role
from backend.runs.streams import events_key
from tests.runs.conftest import World


def parse_sse(body: str) -> tuple[list[dict[str, Any]], int]:
    """(events as {id, event, data}, number of keep-alive comments)."""
    events, comments = [], 0
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if fields:
            events.append(fields)
    return events, comments


async def sse(
    world: World, run_id: str, headers: dict[str, str] | None = None, **params
) -> httpx.Response:
    return await world.client.get(
        world.run_url(run_id) + "/events",
        headers=world.owner.headers if headers is None else headers,
        params=params,
    )


async def test_replay_after_completion_is_the_whole_history_then_end(world: World, worker) -> None:
    agent = await world.agent(chunks=3)
    run = await world.finished((await world.submit(agent, "one two"))["id"])

    response = await sse(world, run["id"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(response.text)
    names = [e["event"] for e in events]
    assert names == ["status", "status", "delta", "delta", "delta", "usage", "status", "end"]
    assert [e["data"]["status"] for e in events if e["event"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == run["output"]
    assert events[-3]["data"] == {
        "input_tokens": 4,
        "output_tokens": 3,
        "total_tokens": 7,
        "cost_usd": 0.0,
    }
    assert events[-1]["data"] == run
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_last_event_id_resumes_after_that_event(world: World, worker) -> None:
    agent = await world.agent(chunks=4)
    run = await world.finished((await world.submit(agent))["id"])
    everything, _ = parse_sse((await sse(world, run["id"])).text)

    resumed = await sse(
        world, run["id"], {**world.owner.headers, "Last-Event-ID": everything[3]["id"]}
    )

    events, _ = parse_sse(resumed.text)
    assert events == everything[4:]


async def test_an_expired_stream_is_synthesized_from_the_database(
    world: World, worker, app
) -> None:
    agent = await world.agent()
    run = await world.finished((await world.submit(agent, "a b c"))["id"])
    await app.state.redis.delete(events_key(run["id"]))

    events, _ = parse_sse((await sse(world, run["id"])).text)

    assert [e["event"] for e in events] == ["status", "status", "delta", "usage", "status", "end"]
    assert events[2]["data"] == {"text": "echo: a b c"}
    assert events[-1]["data"] == run
    resumed = await sse(world, run["id"], {**world.owner.headers, "Last-Event-ID": "99999-0"})
    tail, _ = parse_sse(resumed.text)
    assert [(e["event"], e["id"]) for e in tail] == [("end", "99999-1")]


async def test_live_stream_sends_keep_alives_while_quiet(
    world: World, worker, app, monkeypatch
) -> None:
    monkeypatch.setattr(app.state.settings, "SSE_KEEPALIVE_SECONDS", 0.1)
    agent = await world.agent(latency_ms=800)
    submitted = await world.submit(agent)

    response = await sse(world, submitted["id"])  # follows the run live until `end`

    events, comments = parse_sse(response.text)
    assert comments >= 3
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["status"] == "succeeded"


async def test_access_token_query_parameter_authenticates(world: World, worker) -> None:
    agent = await world.agent()
    run = await world.finished((await world.submit(agent))["id"])
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")

    ok = await sse(world, run["id"], headers={}, access_token=token)
    assert ok.status_code == 200
    assert parse_sse(ok.text)[0][-1]["event"] == "end"
    assert (await sse(world, run["id"], headers={})).status_code == 401
    bad = await sse(world, run["id"], headers={}, access_token="not-a-token")
    assert bad.status_code == 401
    outsider = await world.auth.user()
    foreign = outsider.headers["Authorization"].removeprefix("Bearer ")
    assert (await sse(world, run["id"], headers={}, access_token=foreign)).status_code == 404


async def test_unknown_run_events_is_404(world: World) -> None:
    response = await sse(world, "00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404


# --- WebSocket, over a real server -------------------------------------------------------------


async def _receive_until_end(ws) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        messages.append(message)
        if message["event"] == "end":
            return messages


async def test_websocket_round_trip(world: World, worker, server: str) -> None:
    agent = await world.agent(chunks=2)
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"

    async with connect(f"{url}?access_token={token}") as ws:
        await ws.send(json.dumps({"input": "over the wire"}))
        first = await _receive_until_end(ws)
        await ws.send(json.dumps({"input": ""}))
        error = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
        await ws.send(json.dumps({"input": "again"}))
        second = await _receive_until_end(ws)

    assert [m["event"] for m in first] == [
        "status", "status", "delta", "delta", "usage", "status", "end",
    ]  # fmt: skip
    end = first[-1]["data"]
    assert end["status"] == "succeeded"
    assert end["output"] == "echo: over the wire"
    assert "".join(m["data"]["text"] for m in first if m["event"] == "delta") == end["output"]
    assert all(m["run_id"] == end["id"] for m in first)
    assert all(m["id"] for m in first)
    assert error["event"] == "error"
    assert error["data"]["code"] == "validation_error"
    assert second[-1]["data"]["output"] == "echo: again"
    runs = (
        await world.client.get(
            world.runs_url(agent).replace(f"/agents/{agent.id}", ""), headers=world.owner.headers
        )
    ).json()
    assert runs["pagination"]["total"] == 2


async def test_websocket_accepts_an_api_key(world: World, worker, server: str) -> None:
    agent = await world.agent()
    key = (await world.auth.api_key(world.owner, scopes=["runs:read", "runs:write"])).headers
    url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"
    async with connect(f"{url}?api_key={key['X-API-Key']}") as ws:
        await ws.send(json.dumps({"input": "k"}))
        messages = await _receive_until_end(ws)
    assert messages[-1]["data"]["output"] == "echo: k"


@pytest.mark.parametrize("who", ["nobody", "bad-token", "viewer", "outsider", "read-key"])
async def test_websocket_refuses_with_policy_violation(world: World, server: str, who: str) -> None:
    agent = await world.agent()
    url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"
    if who == "nobody":
        query = ""
    elif who == "bad-token":
        query = "?access_token=garbage"
    elif who == "read-key":
        key = await world.auth.api_key(world.owner, scopes=["runs:read"])
        query = f"?api_key={key.headers['X-API-Key']}"
    else:
        actor = (
            await world.auth.member(world.project, Role.viewer)
            if who == "viewer"
            else await world.auth.user()
        )
        query = "?access_token=" + actor.headers["Authorization"].removeprefix("Bearer ")
    async with connect(url + query) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_a_live_reader_reconnecting_with_last_event_id_misses_nothing(
    world: World, worker, server: str
) -> None:
    agent = await world.agent(latency_ms=600, chunks=3)
    run_id = (await world.submit(agent, "live one"))["id"]
    url = f"http://{server}/api/v1/projects/{world.project.id}/runs/{run_id}/events"

    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url, headers=world.owner.headers) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first: dict[str, str] = {}
            while "data" not in first:  # one whole event, live, then hang up
                line = await anext(lines)
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    first[name] = value
        resumed = await http.get(url, headers={**world.owner.headers, "Last-Event-ID": first["id"]})

    rest, _ = parse_sse(resumed.text)
    everything, _ = parse_sse((await sse(world, run_id)).text)
    assert [first["id"], *(e["id"] for e in rest)] == [e["id"] for e in everything]
    assert rest[-1]["event"] == "end"
