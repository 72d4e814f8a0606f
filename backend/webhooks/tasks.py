"""The worker's side of webhooks: the delivery loop's lifecycle, and the events' retention."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.core.db import utcnow
from backend.webhooks.delivery import Deliverer

log = structlog.get_logger()

# Events older than the retention with no pending delivery, in batches (short transactions).
# A budget.exhausted event of the current month stays: its dedupe key is what makes it once
# a month.
_PURGE = text(
    """
DELETE FROM webhook_events WHERE id IN (
    SELECT e.id FROM webhook_events e
    WHERE e.created_at < :before
        AND (e.dedupe_key IS NULL OR e.created_at < date_trunc('month', :now AT TIME ZONE 'UTC')
            AT TIME ZONE 'UTC')
        AND NOT EXISTS (SELECT FROM webhook_deliveries d
            WHERE d.event_id = e.id AND d.status = 'pending')
    LIMIT :batch
)"""
)
_BATCH = 5000


def start(ctx: dict[str, Any]) -> None:
    if not ctx["settings"].WEBHOOK_DELIVERY_ENABLED:
        return
    deliverer = Deliverer(ctx["settings"])
    deliverer.start()
    ctx["webhooks"] = deliverer


async def stop(ctx: dict[str, Any]) -> None:
    deliverer: Deliverer | None = ctx.pop("webhooks", None)
    if deliverer is not None:
        await deliverer.close()


async def purge_events(ctx: dict[str, Any], *, now: datetime | None = None) -> int:
    """ARQ cron: delete delivered (or failed) events older than WEBHOOK_EVENT_RETENTION_DAYS,
    with their deliveries; returns how many."""
    settings: Settings = ctx["settings"]
    sessionmaker: async_sessionmaker[AsyncSession] = ctx["sessionmaker"]
    now = now or utcnow()
    params = {
        "before": now - timedelta(days=settings.WEBHOOK_EVENT_RETENTION_DAYS),
        "now": now,
        "batch": _BATCH,
    }
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            result = await session.execute(_PURGE, params)
            deleted = cast("CursorResult[Any]", result).rowcount or 0
        total += deleted
        if deleted < _BATCH:
            break
    if total:
        log.info("webhook_events_purged", count=total)
    return total
