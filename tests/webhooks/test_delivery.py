"""Deliveries as a real receiver sees them, from the real worker: signed per Standard Webhooks
(verified with the `standardwebhooks` package), in order, retried, disabled by 410."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from standardwebhooks import Webhook

from backend.agents.models import AgentEvent
from backend.webhooks.models import WebhookEvent
from tests.runs.conftest import World
from tests.webhooks.conftest import Hooks


def _verified(secret: str, received) -> dict:
    return Webhook(secret).verify(received.body, received.headers)


async def _spawn(world: World) -> dict:
    agent_type = await world.agent_type()
    response = await world.client.post(
        f"/api/v1/projects/{world.project.id}/agents",
        json={"agent_type_id": str(agent_type.id), "name": "hooked"},
        headers=world.owner.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_runs_life_arrives_signed_and_in_order(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url)
    agent = await _spawn(world)
    run = await world.submit(uuid.UUID(agent["id"]), "hello")
    final = await world.finished(run["id"])
    assert final["status"] == "succeeded"
    await hooks.settled(hook["id"], 6)

    events = [_verified(hook["secret"], r) for r in receiver.requests]
    assert len({r.id for r in receiver.requests}) == len(receiver.requests) == 6
    runs = [e["data"] for e in events if e["type"] == "run.status_changed"]
    assert [(d["from_status"], d["to_status"]) for d in runs] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert [d["run"]["status"] for d in runs] == ["queued", "running", "succeeded"]
    assert runs[-1]["run"] == final  # the object as GET returns it
    agents = [e["data"] for e in events if e["type"] == "agent.status_changed"]
    assert [(d["from_status"], d["to_status"]) for d in agents] == [
        (None, "idle"),
        ("idle", "working"),
        ("working", "idle"),
    ]
    assert agents[0]["agent"] == agent
    got = await world.client.get(
        f"/api/v1/projects/{world.project.id}/agents/{agent['id']}", headers=world.owner.headers
    )
    assert agents[-1]["agent"] | {"updated_at": None, "last_activity_at": None} == got.json() | {
        "updated_at": None,
        "last_activity_at": None,
    }
    # Invariant 9: one event per committed transition; the webhook-id is the event's id.
    async with world.sessions() as session:
        event_ids = {str(i) for i in await session.scalars(select(WebhookEvent.id))}
        transitions = await session.scalar(select(func.count()).select_from(AgentEvent))
        kinds = dict(
            (
                await session.execute(
                    select(WebhookEvent.type, func.count()).group_by(WebhookEvent.type)
                )
            ).all()
        )
    assert kinds == {"agent.status_changed": transitions + 1, "run.status_changed": 3}
    assert {r.id for r in receiver.requests} == event_ids
