"""Long-lived requests (SSE, ?wait, WebSocket): capped per caller across API processes, and
ended within seconds once the caller loses access (deactivated, key revoked, member removed)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from sqlalchemy import delete, func, select, update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.auth.models import ApiKey, User
from backend.core.db import utcnow
from backend.projects.models import ProjectMember, Role
from backend.runs.models import Run
from backend.runs.watch import slots_key
from tests.conftest import make_settings
from tests.runs.conftest import World
from tests.support.apps import running_app
from tests.support.auth import Actor

RECHECK = 0.2
CAP = 2
# Access lost → the request ends within this (a few re-check periods, plus a slow machine).
ENDS_WITHIN = 5.0


@pytest.fixture
async def fast(settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    config = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        STREAM_RECHECK_SECONDS=RECHECK,
        MAX_STREAMS_PER_CALLER=CAP,
        QUEUE_NAME=settings.QUEUE_NAME,  # no worker listens: runs stay queued, streams open
    )
    async with running_app(config) as (app, client):
        yield app, client


@asynccontextmanager
async def served(app) -> AsyncIterator[str]:
    """`app` (lifespan already running) behind a real uvicorn, for WebSockets."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def revoke_key(world: World, actor: Actor) -> None:
    raw = actor.headers["X-API-Key"]
    await world.db.execute(
        update(ApiKey).where(ApiKey.prefix == raw[:12]).values(revoked_at=utcnow())
    )
    await world.db.commit()


async def deactivate(world: World, actor: Actor) -> None:
    await world.db.execute(update(User).where(User.id == actor.user.id).values(is_active=False))
    await world.db.commit()


async def remove_member(world: World, actor: Actor) -> None:
    await world.db.execute(
        delete(ProjectMember).where(
            ProjectMember.project_id == world.project.id, ProjectMember.user_id == actor.user.id
        )
    )
    await world.db.commit()


async def key_holder(world: World) -> Actor:
    return await world.auth.api_key(world.owner, project=world.project)


async def deactivated_member(world: World) -> Actor:
    return await world.auth.member(world.project, Role.member)


REVOCATIONS: dict[str, tuple[Callable, Callable[[World, Actor], Awaitable[None]]]] = {
    "key_revoked": (key_holder, revoke_key),
    "user_deactivated": (deactivated_member, deactivate),
    "member_removed": (deactivated_member, remove_member),
}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = ENDS_WITHIN) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", sorted(REVOCATIONS))
async def test_sse_stream_ends_once_access_is_lost(world: World, fast, how) -> None:
    app, client = fast
    make, revoke = REVOCATIONS[how]
    actor = await make(world)
    run = await world.submit(await world.agent())  # queued for good: the stream stays open
    stream = asyncio.create_task(
        client.get(world.run_url(run["id"]) + "/events", headers=actor.headers)
    )
    await until(lambda: _slots_total(app))
    assert not stream.done()

    await revoke(world, actor)
    response = await asyncio.wait_for(stream, ENDS_WITHIN)

    assert response.status_code == 200
    assert "event: status" in response.text
    assert "event: end" not in response.text
    await until(lambda: _no_slots(app))
    again = await client.get(world.run_url(run["id"]) + "/events", headers=actor.headers)
    assert again.status_code in (401, 404)


@pytest.mark.parametrize("how", sorted(REVOCATIONS))
async def test_websocket_is_closed_once_access_is_lost(world: World, fast, how) -> None:
    app, _client = fast
    make, revoke = REVOCATIONS[how]
    actor = await make(world)
    agent = await world.agent()
    query = (
        f"api_key={actor.headers['X-API-Key']}"
        if "X-API-Key" in actor.headers
        else f"access_token={actor.headers['Authorization'].removeprefix('Bearer ')}"
    )
    async with served(app) as server:
        url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws?{query}"
        async with connect(url) as ws:
            await ws.send(json.dumps({"input": "stays queued"}))
            first = json.loads(await asyncio.wait_for(ws.recv(), ENDS_WITHIN))
            assert first["event"] == "status"
            await revoke(world, actor)  # the socket is idle now: only the re-check notices
            with pytest.raises(ConnectionClosed) as closed:
                await drain(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    await until(lambda: _no_slots(app))


@pytest.mark.parametrize("how", sorted(REVOCATIONS))
async def test_wait_answers_the_auth_error_once_access_is_lost(world: World, fast, how) -> None:
    _app, client = fast
    make, revoke = REVOCATIONS[how]
    actor = await make(world)
    agent = await world.agent()
    waiting = asyncio.create_task(
        client.post(world.runs_url(agent) + "?wait=60", json={"input": "x"}, headers=actor.headers)
    )
    await until(lambda: _runs(world, 1))
    await revoke(world, actor)
    response = await asyncio.wait_for(waiting, ENDS_WITHIN)
    assert response.status_code in (401, 404), response.text
    assert response.json()["error"]["code"] in ("unauthorized", "not_found")


async def test_open_streams_are_capped_per_caller_across_processes(
    world: World, fast, settings
) -> None:
    app, client = fast
    config = app.state.settings
    run = await world.submit(await world.agent())
    events = world.run_url(run["id"]) + "/events"
    async with running_app(config) as (_other_app, other):
        opened = [
            asyncio.create_task(client.get(events, headers=world.owner.headers)),
            asyncio.create_task(other.get(events, headers=world.owner.headers)),
        ]
        who = f"user:{world.owner.user.id}"
        await until(lambda: _count(app, who, CAP))

        refused = await asyncio.wait_for(
            other.get(events, headers=world.owner.headers), ENDS_WITHIN
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # ?wait counts too, and is refused before it creates anything.
        agent = await world.agent()
        wait = await client.post(
            world.runs_url(agent) + "?wait=1", json={"input": "x"}, headers=world.owner.headers
        )
        assert wait.status_code == 429
        assert (
            await world.db.scalar(
                select(func.count()).select_from(Run).where(Run.agent_id == agent.id)
            )
            == 0
        )
        # Another caller (an API key of the same user) has its own budget.
        key = await world.auth.api_key(world.owner)
        other_key_stream = asyncio.create_task(client.get(events, headers=key.headers))
        await until(lambda: _key_slots(app))
        assert not other_key_stream.done()
        assert await _count(app, who, CAP)  # unchanged
        # End the owner's streams: the slots come back.
        await remove_member(world, world.owner)
        for task in (*opened, other_key_stream):
            await asyncio.wait_for(task, ENDS_WITHIN)
        await until(lambda: _count(app, who, 0))


async def test_websocket_beyond_the_cap_is_closed_1013(world: World, fast) -> None:
    app, _client = fast
    agent = await world.agent()
    # A dead API process's slots expire by themselves; live ones (score ahead) count.
    who = f"user:{world.owner.user.id}"
    now = time.time()
    await app.state.redis.zadd(slots_key(who), {"dead": now - 1, "a": now + 60, "b": now + 60})
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    async with served(app) as server:
        url = f"ws://{server}/api/v1/projects/{world.project.id}/agents/{agent.id}/ws"
        async with connect(f"{url}?access_token={token}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), ENDS_WITHIN)
        assert closed.value.rcvd.code == 1013
        await app.state.redis.zrem(slots_key(who), "a")
        async with connect(f"{url}?access_token={token}") as ws:
            await ws.send(json.dumps({"input": "fits again"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), ENDS_WITHIN))["event"] == "status"


async def drain(ws) -> None:
    """Receive until the socket closes (ConnectionClosed); a quiet open socket times out."""
    while True:
        await asyncio.wait_for(ws.recv(), ENDS_WITHIN)


async def _count(app, who: str, expected: int) -> bool:
    return await app.state.redis.zcard(slots_key(who)) == expected


async def _key_slots(app) -> bool:
    return bool(await app.state.redis.keys(slots_key("key:*")))


async def _slots_total(app) -> bool:
    return bool(await app.state.redis.keys(slots_key("*")))


async def _no_slots(app) -> bool:
    for key in await app.state.redis.keys(slots_key("*")):
        if await app.state.redis.zcard(key):
            return False
    return True


async def _runs(world: World, expected: int) -> bool:
    async with world.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Run).where(Run.project_id == world.project.id)
        )
    return count == expected
