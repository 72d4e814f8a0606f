"""Spawning races a project's deletion: never an idle agent left in a deleted project."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select, text

from backend.agents.models import Agent
from backend.projects.models import Project


async def waiting_on_locks(engine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )


async def until_waiting(engine, count: int, *requests: asyncio.Task) -> None:
    """Until `count` backends wait on a lock; the requests must all still be pending."""
    deadline = time.monotonic() + 10
    while await waiting_on_locks(engine) < count:
        for request in requests:
            if request.done():
                raise AssertionError(f"answered instead of waiting: {request.result().text}")
        assert time.monotonic() < deadline, f"fewer than {count} requests waiting on a lock"
        await asyncio.sleep(0.02)


async def test_spawn_queued_behind_a_delete_is_refused(client, auth, agents, engine, db) -> None:
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    url = f"/api/v1/projects/{project.id}"
    async with engine.connect() as holder:
        # Another transaction holds the project row: both requests queue behind it, the
        # deletion first.
        await holder.execute(select(Project.id).where(Project.id == project.id).with_for_update())
        delete = asyncio.create_task(client.delete(url, headers=owner.headers))
        await until_waiting(engine, 1, delete)
        spawn = asyncio.create_task(
            client.post(
                f"{url}/agents",
                json={"agent_type_id": str(agent_type.id), "name": "late"},
                headers=owner.headers,
            )
        )
        await until_waiting(engine, 2, delete, spawn)
        await holder.rollback()
        deleted, spawned = await delete, await spawn
    assert deleted.status_code == 204, deleted.text
    assert spawned.status_code == 404, spawned.text
    assert spawned.json()["error"]["code"] == "not_found"
    count = select(func.count()).select_from(Agent).where(Agent.project_id == project.id)
    assert await db.scalar(count) == 0


async def test_spawn_ahead_of_a_delete_is_terminated_with_the_project(
    client, auth, agents, engine, db
) -> None:
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    url = f"/api/v1/projects/{project.id}"
    async with engine.connect() as holder:
        await holder.execute(select(Project.id).where(Project.id == project.id).with_for_update())
        spawn = asyncio.create_task(
            client.post(
                f"{url}/agents",
                json={"agent_type_id": str(agent_type.id), "name": "early"},
                headers=owner.headers,
            )
        )
        await until_waiting(engine, 1, spawn)
        delete = asyncio.create_task(client.delete(url, headers=owner.headers))
        await until_waiting(engine, 2, spawn, delete)
        await holder.rollback()
        spawned, deleted = await spawn, await delete
    assert spawned.status_code == 201, spawned.text
    assert deleted.status_code == 204, deleted.text
    statuses = await db.scalars(select(Agent.status).where(Agent.project_id == project.id))
    assert list(statuses) == ["terminated"]
