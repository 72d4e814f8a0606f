"""The outbox's backlog as Prometheus gauges, read from Postgres at scrape time (every API
process reports the same truth). Attempt counters and histograms are in backend.webhooks.delivery,
observed by the worker that made the attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator

import structlog
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

log = structlog.get_logger()

MAX_AGE_SECONDS = 10.0
# Undelivered: pending deliveries, and events not yet fanned out into deliveries.
_BACKLOG = text(
    """SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS pending,
    coalesce(extract(epoch FROM now() - least(
        (SELECT min(created_at) FROM webhook_deliveries WHERE status = 'pending'),
        (SELECT e.created_at FROM webhook_events e WHERE NOT e.fanned_out ORDER BY e.seq
            LIMIT 1))), 0) AS oldest_seconds"""
)


class OutboxCollector(Collector):
    def __init__(self) -> None:
        self.pending: int | None = None
        self.oldest_seconds = 0.0
        self.refreshed_at = float("-inf")

    async def refresh(self, app: FastAPI, *, max_age: float = MAX_AGE_SECONDS) -> None:
        if time.monotonic() - self.refreshed_at < max_age:
            return
        try:
            async with app.state.sessionmaker() as session:
                row = (await session.execute(_BACKLOG)).one()
        except Exception:  # noqa: BLE001 - a scrape must not fail because Postgres is down
            log.warning("webhook_metrics_refresh_failed", exc_info=True)
            return
        self.pending, self.oldest_seconds = row.pending, float(row.oldest_seconds)
        self.refreshed_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        if self.pending is None:
            return
        yield GaugeMetricFamily(
            "agentry_webhook_deliveries_pending",
            "Webhook deliveries not yet succeeded or failed",
            value=self.pending,
        )
        yield GaugeMetricFamily(
            "agentry_webhook_outbox_oldest_pending_seconds",
            "Age of the oldest undelivered webhook event (pending delivery or not yet fanned out); 0 when none",
            value=self.oldest_seconds,
        )


def _install() -> OutboxCollector:
    collector = OutboxCollector()
    REGISTRY.register(collector)
    return collector


COLLECTOR = _install()


async def refresh(app: FastAPI) -> None:
    await COLLECTOR.refresh(app)
