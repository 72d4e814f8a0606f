"""Deliveries as a real receiver sees them, from the real worker: signed per Standard Webhooks
(verified with the `standardwebhooks` package), in order, retried, disabled by 410."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from backend.agents import state as agent_state
from backend.agents.models import Agent, AgentEvent, AgentStatus
from backend.config import Settings
from backend.webhooks.models import WebhookEndpoint, WebhookEvent
from backend.worker import run_worker
from tests.runs.conftest import World, eventually
from tests.webhooks.conftest import Hooks
from tests.webhooks.receiver import HANG


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


async def churn(world: World, *, agents: int, rounds: int) -> list[Agent]:
    """`agents` agents, paused and resumed `rounds` times: 2 events per agent per round."""
    agent_type = await world.agent_type()
    made = [await world.agent(agent_type) for _ in range(agents)]
    for _ in range(rounds):
        for to in (AgentStatus.paused, AgentStatus.idle):
            async with world.sessions() as session, session.begin():
                await agent_state.transition_project(session, world.project.id, to)
    return made


async def _test_event(hooks: Hooks, hook: dict) -> None:
    await hooks.call("POST", f"/{hook['id']}/test", expect=202)


async def test_500_twice_then_200_is_three_attempts_of_one_webhook_id(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers(500, 500)
    hook = await hooks.create(receiver.url)
    await _test_event(hooks, hook)
    [delivery] = await hooks.settled(hook["id"], 1)
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == (
        "succeeded",
        3,
        200,
    )
    assert len(receiver.requests) == 3
    assert len({r.id for r in receiver.requests}) == 1
    for received in receiver.requests:
        assert _verified(hook["secret"], received) == {"type": "webhook.test", "data": {}} | {
            "timestamp": received.json["timestamp"]
        }


async def test_retries_end_failed_after_the_schedule(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers(default=503)
    hook = await hooks.create(receiver.url)
    await _test_event(hooks, hook)
    [delivery] = await hooks.settled(hook["id"], 1)
    # WEBHOOK_RETRY_SCHEDULE has three entries: the first attempt and three retries.
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 4, "HTTP 503")
    assert len(receiver.requests) == 4
    listed = await hooks.call("GET", f"/{hook['id']}/deliveries?status=failed")
    assert [d["id"] for d in listed["data"]] == [str(delivery.id)]
    assert (await hooks.call("GET", f"/{hook['id']}/deliveries?status=succeeded"))["data"] == []


async def test_redirects_are_not_followed(world: World, hooks: Hooks, receivers, worker) -> None:
    receiver = await receivers(307)
    hook = await hooks.create(receiver.url)
    await _test_event(hooks, hook)
    [delivery] = await hooks.settled(hook["id"], 1)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]


async def test_410_disables_the_endpoint(world: World, hooks: Hooks, receivers, worker) -> None:
    receiver = await receivers(410)
    hook = await hooks.create(receiver.url)
    await _test_event(hooks, hook)
    [delivery] = await hooks.settled(hook["id"], 1)
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == ("failed", 1, 410)
    assert (await hooks.call("GET", f"/{hook['id']}"))["enabled"] is False
    agent = await world.agent()
    await world.finished((await world.submit(agent))["id"])
    assert len(receiver.requests) == 1  # nothing more is written for a disabled endpoint
    assert len(await hooks.deliveries(hook["id"])) == 1


async def test_a_hanging_receiver_times_out_and_is_retried(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers(HANG)
    hook = await hooks.create(receiver.url)
    await _test_event(hooks, hook)
    [delivery] = await hooks.settled(hook["id"], 1)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert len({r.id for r in receiver.requests}) == 1
    assert len(receiver.requests) == 2


async def test_a_hanging_endpoint_delays_no_other_endpoint(
    world: World, hooks: Hooks, receivers, worker_settings: Settings
) -> None:
    stuck, fine = await receivers(default=HANG), await receivers()
    slow = await hooks.create(stuck.url)
    fast = await hooks.create(fine.url)
    await churn(world, agents=10, rounds=1)  # 20 events to each endpoint
    worker = await run_worker(worker_settings.model_copy(update={"WEBHOOK_TIMEOUT_SECONDS": 5}))
    try:
        await hooks.settled(fast["id"], 20)
        stuck_rows = await hooks.deliveries(slow["id"])
    finally:
        await worker.close()
    assert len(fine.requests) == 20
    # Every slow delivery is still in its first attempt (or not started): none waited on it.
    assert {(r.status, r.attempts <= 1) for r in stuck_rows} == {("pending", True)}
    assert 1 <= len(stuck.requests) <= worker_settings.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url)
    rotated = await hooks.call("POST", f"/{hook['id']}/rotate-secret")
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != hook["secret"]
    agent = await world.agent()
    await world.finished((await world.submit(agent))["id"])
    await _test_event(hooks, hook)
    await hooks.settled(hook["id"], 6)
    assert len(receiver.requests) == 6
    for received in receiver.requests:
        assert len(received.headers["webhook-signature"].split(" ")) == 2
        assert _verified(hook["secret"], received) == _verified(rotated["secret"], received)


async def test_after_the_overlap_only_the_new_secret_signs(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url)
    rotated = await hooks.call("POST", f"/{hook['id']}/rotate-secret")
    async with world.sessions() as session, session.begin():
        endpoint = await session.get(WebhookEndpoint, uuid.UUID(hook["id"]))
        endpoint.previous_secret_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    await _test_event(hooks, hook)
    await hooks.settled(hook["id"], 1)
    [received] = receiver.requests
    _verified(rotated["secret"], received)
    with pytest.raises(WebhookVerificationError):
        _verified(hook["secret"], received)


async def test_redeliver_sends_the_same_webhook_id_again(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url, ["agent.status_changed"])
    await _test_event(hooks, hook)  # `test` ignores the endpoint's events
    [delivery] = await hooks.settled(hook["id"], 1)
    path = f"/{hook['id']}/deliveries/{delivery.id}/redeliver"
    await hooks.call("POST", path, expect=202)
    await eventually(lambda: _count(receiver, 2))
    [redelivered] = await hooks.settled(hook["id"], 1)
    assert (redelivered.status, redelivered.attempts) == ("succeeded", 2)
    first, second = receiver.requests
    assert first.id == second.id == str(delivery.event_id)
    assert first.json == second.json
    listed = await hooks.call("GET", f"/{hook['id']}/deliveries")
    assert [(d["event_type"], d["status"], d["attempts"]) for d in listed["data"]] == [
        ("webhook.test", "succeeded", 2)
    ]
    other = await hooks.create(receiver.url)
    await hooks.call("POST", f"/{other['id']}/deliveries/{delivery.id}/redeliver", expect=404)


async def _count(receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def test_an_endpoint_receives_only_the_events_it_subscribes_to(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    runs_only, agents_only = await receivers(), await receivers()
    runs_hook = await hooks.create(runs_only.url, ["run.status_changed"])
    agents_hook = await hooks.create(agents_only.url, ["agent.status_changed"])
    agent = await world.agent()
    await world.finished((await world.submit(agent))["id"])
    await hooks.settled(runs_hook["id"], 3)
    await hooks.settled(agents_hook["id"], 2)
    assert {e["type"] for e in runs_only.events()} == {"run.status_changed"}
    assert {e["type"] for e in agents_only.events()} == {"agent.status_changed"}
    assert len(runs_only.requests) == 3
    assert len(agents_only.requests) == 2
