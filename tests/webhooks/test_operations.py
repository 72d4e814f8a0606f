"""Operations: Prometheus series for deliveries and the outbox's backlog; retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from backend.core.db import utcnow
from backend.webhooks import metrics, process
from backend.webhooks.models import WebhookDelivery, WebhookEvent
from backend.webhooks.tasks import purge_events
from backend.worker import run_worker
from tests.runs.conftest import World
from tests.webhooks.conftest import Hooks


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_outcomes_and_the_backlog(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    before = _sample("agentry_webhook_deliveries_total", outcome="retry")
    succeeded = _sample("agentry_webhook_deliveries_total", outcome="succeeded")
    receiver = await receivers(500)
    hook = await hooks.create(receiver.url)
    await hooks.call("POST", f"/{hook['id']}/test", expect=202)
    await hooks.settled(hook["id"], 1)
    assert _sample("agentry_webhook_deliveries_total", outcome="retry") == before + 1
    assert _sample("agentry_webhook_deliveries_total", outcome="succeeded") == succeeded + 1
    assert _sample("agentry_webhook_attempt_seconds_count", outcome="retry") >= 1

    parked = await hooks.create("http://127.0.0.1:9/hook", enabled=False)
    await hooks.call("POST", f"/{parked['id']}/test", expect=202)  # pending: endpoint disabled
    async with world.sessions() as session, session.begin():
        await session.execute(
            update(WebhookDelivery).values(created_at=utcnow() - timedelta(seconds=120))
        )
    metrics.COLLECTOR.refreshed_at = float("-inf")
    text = (await world.client.get("/metrics")).text
    assert "agentry_webhook_deliveries_pending 1.0" in text
    oldest = [
        line for line in text.splitlines() if line.startswith("agentry_webhook_outbox_oldest")
    ]
    assert len(oldest) == 1
    assert float(oldest[0].split()[-1]) >= 120


async def test_retention_deletes_old_settled_events_only(
    world: World, hooks: Hooks, receivers, worker, worker_settings
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url)
    parked = await hooks.create("http://127.0.0.1:9/hook", enabled=False)
    for target in (hook, hook, parked):
        await hooks.call("POST", f"/{target['id']}/test", expect=202)
    await hooks.settled(hook["id"], 2)
    old = utcnow() - timedelta(days=worker_settings.WEBHOOK_EVENT_RETENTION_DAYS, hours=1)
    async with world.sessions() as session, session.begin():
        await session.execute(update(WebhookEvent).values(created_at=old))
    await hooks.call("POST", f"/{hook['id']}/test", expect=202)  # a recent one stays
    await hooks.settled(hook["id"], 3)
    ctx = {"settings": worker_settings, "sessionmaker": world.sessions}
    # Two old delivered events go; the old one still pending (disabled endpoint) stays.
    assert await purge_events(ctx) == 2
    async with world.sessions() as session:
        left = list(await session.scalars(select(WebhookDelivery.status)))
    assert sorted(left) == ["pending", "succeeded"]


async def test_a_worker_with_delivery_disabled_writes_events_and_a_webhooks_process_delivers(
    world: World, hooks: Hooks, receivers, worker_settings
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url, ["run.status_changed"])
    agent = await world.agent()
    quiet = await run_worker(worker_settings.model_copy(update={"WEBHOOK_DELIVERY_ENABLED": False}))
    try:
        await world.finished((await world.submit(agent))["id"])
        await asyncio.sleep(0.3)  # several polls of an enabled worker
        assert receiver.requests == []
        # Its runs' events are written; nobody fanned them out into deliveries yet.
        async with world.sessions() as session:
            events = await session.scalar(select(func.count()).select_from(WebhookEvent))
        assert events == 3
        assert await hooks.deliveries(hook["id"]) == []
    finally:
        await quiet.close()
    stop = asyncio.Event()
    delivering = asyncio.create_task(process.serve(worker_settings, stop))  # `agentry webhooks`
    try:
        await hooks.settled(hook["id"], 3)
    finally:
        stop.set()
        await delivering
    transitions = [(e["data"]["from_status"], e["data"]["to_status"]) for e in receiver.events()]
    assert transitions == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
