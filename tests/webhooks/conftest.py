"""Webhook tests: the runs tests' world and worker, receivers on 127.0.0.1, short retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.webhooks.models import WebhookDelivery
from tests.runs import conftest as runs
from tests.runs.conftest import FAST, World, eventually
from tests.webhooks.receiver import Receiver

# The runs tests' fixtures: a world (owner, project, agent types) and the in-process worker.
world, worker = runs.world, runs.worker

WEBHOOKS_FAST = {
    **FAST,
    "WEBHOOK_ALLOW_PRIVATE_URLS": True,
    "WEBHOOK_RETRY_SCHEDULE": "0.1,0.1,0.1",
    "WEBHOOK_TIMEOUT_SECONDS": 0.5,
    "WEBHOOK_POLL_SECONDS": 0.02,
}


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=WEBHOOKS_FAST)


@pytest.fixture
def private_urls(app) -> Any:
    """The app accepts receivers on 127.0.0.1 (as under `agentry dev`)."""
    original = app.state.settings
    app.state.settings = original.model_copy(update={"WEBHOOK_ALLOW_PRIVATE_URLS": True})
    yield
    app.state.settings = original


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start(*script: int | str, default: int | str = 200) -> Receiver:
        receiver = await Receiver(list(script), default).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


class Hooks:
    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def base(self) -> str:
        return f"/api/v1/projects/{self.world.project.id}/webhooks"

    async def create(self, url: str, events: list[str] | None = None, **body: Any) -> dict:
        response = await self.world.client.post(
            self.base,
            json={"url": url, "events": events or ["*"], **body},
            headers=self.world.owner.headers,
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        response = await self.world.client.request(
            method, self.base + path, headers=self.world.owner.headers, **kw
        )
        assert response.status_code == expect, response.text
        return response.json() if response.content else None

    async def deliveries(self, webhook_id: str) -> list[WebhookDelivery]:
        async with self.world.sessions() as session:
            rows = await session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == webhook_id)
                .order_by(WebhookDelivery.seq)
            )
            return list(rows)

    async def settled(self, webhook_id: str, count: int, timeout: float = 15) -> list:
        """Wait until `count` deliveries exist and none is pending."""

        async def done() -> list | None:
            rows = await self.deliveries(webhook_id)
            if len(rows) >= count and all(r.status != "pending" for r in rows):
                return rows
            return None

        return await eventually(done, timeout=timeout, every=0.05)


@pytest.fixture
def hooks(world: World, private_urls: None) -> Hooks:
    return Hooks(world)
