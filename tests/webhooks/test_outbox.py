"""The outbox (DESIGN.md invariant 9): an event per committed change, in the change's
transaction; none for a rolled-back change; delivered at least once, even across a SIGKILL,
in per-agent order while another endpoint is down."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, update

from backend.agents import state as agent_state
from backend.agents.models import AgentStatus
from backend.config import Settings
from backend.projects.models import Project
from backend.runs.models import Run
from backend.usage.tokens import Usage
from backend.webhooks.models import WebhookDelivery, WebhookEvent
from backend.worker import run_worker
from tests.runs.conftest import World, eventually, spawn_worker_process
from tests.usage.conftest import record_call
from tests.webhooks.conftest import WEBHOOKS_FAST, Hooks
from tests.webhooks.receiver import HANG
from tests.webhooks.test_delivery import churn


async def _events(world: World) -> int:
    async with world.sessions() as session:
        return await session.scalar(select(func.count()).select_from(WebhookEvent)) or 0


async def test_a_rolled_back_change_leaves_no_event(world: World, hooks: Hooks) -> None:
    await hooks.create("http://127.0.0.1:9/hook")
    agent = await world.agent()
    async with world.sessions() as session:
        await agent_state.transition(session, agent.id, AgentStatus.paused)
        inside = await session.scalar(select(func.count()).select_from(WebhookEvent))
        await session.rollback()
    assert inside == 1
    assert await _events(world) == 0
    async with world.sessions() as session, session.begin():
        await agent_state.transition(session, agent.id, AgentStatus.paused)
    assert await _events(world) == 1


async def test_projects_without_a_subscribed_endpoint_get_no_events(
    world: World, hooks: Hooks
) -> None:
    hook = await hooks.create("http://127.0.0.1:9/hook", ["run.status_changed"])
    await churn(world, agents=2, rounds=1)
    assert await _events(world) == 0  # not subscribed to agent events
    await hooks.call("PATCH", f"/{hook['id']}", json={"events": ["*"], "enabled": False})
    await churn(world, agents=2, rounds=1)
    assert await _events(world) == 0  # disabled


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_thousand_events_keep_per_agent_order_while_another_endpoint_is_down(
    world: World, hooks: Hooks, receivers, worker_settings: Settings
) -> None:
    receiver = await receivers()
    up = await hooks.create(receiver.url, ["agent.status_changed"])
    down = await hooks.create(f"http://127.0.0.1:{_closed_port()}/hook", ["agent.status_changed"])
    agents = await churn(world, agents=50, rounds=10)
    worker = await run_worker(worker_settings.model_copy(update={"WEBHOOK_RETRY_SCHEDULE": "60"}))
    try:
        await hooks.settled(up["id"], 1000, timeout=60)
        refused = await hooks.deliveries(down["id"])
    finally:
        await worker.close()
    # The down endpoint: each agent's first event refused and waiting for its retry, the rest
    # waiting behind it.
    assert {(r.status, r.attempts) for r in refused} == {("pending", 1), ("pending", 0)}
    assert sum(r.attempts for r in refused) == 50
    assert len(receiver.requests) == 1000
    assert len({r.id for r in receiver.requests}) == 1000
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for event in receiver.events():
        data = event["data"]
        seen[data["agent"]["id"]].append((data["from_status"], data["to_status"]))
    expected = [("idle", "paused"), ("paused", "idle")] * 10
    assert {str(a.id) for a in agents} == set(seen)
    assert all(transitions == expected for transitions in seen.values())


async def test_budget_exhausted_is_sent_once_a_month_per_limit(
    world: World, hooks: Hooks, receivers, worker_settings: Settings
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url, ["budget.exhausted"])
    async with world.sessions() as session, session.begin():
        await session.execute(
            update(Project).where(Project.id == world.project.id).values(monthly_token_limit=5)
        )
    agent_type = await world.agent_type()
    agents = [await world.agent(agent_type) for _ in range(3)]
    # Submitted before any is accounted (a submit after the limit is reached is a 402).
    runs = [await world.submit(agent, "one two three four five six") for agent in agents]
    worker = await run_worker(worker_settings)
    try:
        finished = [await world.finished(run["id"]) for run in runs]
        await hooks.settled(hook["id"], 1)
    finally:
        await worker.close()
    assert "succeeded" in {run["status"] for run in finished}
    [event] = receiver.events()
    assert event["type"] == "budget.exhausted"
    data = event["data"]
    assert data["project_id"] == str(world.project.id)
    assert data["limit"] == "tokens"
    assert data["budget"] == {"monthly_cost_limit_usd": None, "monthly_token_limit": 5}
    assert data["month_tokens"] >= 5
    assert len(await hooks.deliveries(hook["id"])) == 1


async def test_an_event_whose_worker_was_killed_mid_delivery_is_delivered(
    world: World, hooks: Hooks, receivers, worker_settings: Settings, tmp_path: Path
) -> None:
    receiver = await receivers(HANG)
    hook = await hooks.create(receiver.url, ["agent.status_changed"])
    agent = await world.agent()
    env = {k: v for k, v in WEBHOOKS_FAST.items() if k.startswith("WEBHOOK_")}
    env["WEBHOOK_TIMEOUT_SECONDS"] = 5  # the attempt hangs until the kill
    process = spawn_worker_process(worker_settings, tmp_path / "worker.log", **env)
    try:
        run = await world.submit(agent)  # the worker commits idle->working, working->idle
        await eventually(lambda: _received(receiver, 1), timeout=30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(receiver.requests) == 1
    # A new worker takes the delivery again once its lease (2 x timeout + 1 s) ran out: the
    # lease ends now (the event behind it waits for it).
    async with world.sessions() as session, session.begin():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.attempts > 0)
            .values(next_attempt_at=func.now())
        )
    survivor = await run_worker(worker_settings)
    try:
        await world.finished(run["id"])
        rows = await hooks.settled(hook["id"], 2)
    finally:
        await survivor.close()
    assert [r.status for r in rows] == ["succeeded", "succeeded"]
    ids = [r.id for r in receiver.requests]
    assert ids[0] == ids[1]  # the same event again: at least once
    transitions = [(e["data"]["from_status"], e["data"]["to_status"]) for e in receiver.events()]
    assert transitions[1:] == [("idle", "working"), ("working", "idle")]


async def _received(receiver, n: int) -> bool:
    await asyncio.sleep(0)
    return len(receiver.requests) >= n


async def test_budget_exhausted_is_written_once_per_month_and_limit(
    world: World, hooks: Hooks
) -> None:
    await hooks.create("http://127.0.0.1:9/hook", ["budget.exhausted"])
    async with world.sessions() as session, session.begin():
        await session.execute(
            update(Project).where(Project.id == world.project.id).values(monthly_token_limit=5)
        )
    agent = await world.agent()
    december, january = datetime(2026, 12, 5, tzinfo=UTC), datetime(2027, 1, 5, tzinfo=UTC)
    months = [december] * 3 + [january] * 2  # 3, 6 (reached), 9 tokens; then 3, 6 (reached)
    for attempt, at in enumerate(months, start=1):
        async with world.sessions() as session, session.begin():
            run = Run(
                project_id=world.project.id,
                agent_id=agent.id,
                input="x",
                provider="fake",
                model="fake-1",
            )
            session.add(run)
            await session.flush()
            await record_call(
                session,
                run,
                attempt=attempt,
                provider="fake",
                model="fake-1",
                usage=Usage(input_tokens=1, output_tokens=2),
                succeeded=True,
                at=at,
            )
    async with world.sessions() as session:
        events = list(await session.scalars(select(WebhookEvent).order_by(WebhookEvent.seq)))
    assert [(e.type, e.payload["limit"], e.payload["month_tokens"]) for e in events] == [
        ("budget.exhausted", "tokens", 6),
        ("budget.exhausted", "tokens", 6),
    ]
    assert [e.created_at for e in events] == [months[1], months[4]]
