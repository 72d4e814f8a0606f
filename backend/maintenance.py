"""Maintenance (the worker's hourly cron ``maintenance``): each domain purges or compacts
what has expired, in its own transaction.

- idempotency keys older than their 24 h window (core);
- refresh-token families whose newest token expired more than REFRESH_TOKEN_RETENTION_DAYS ago
  (auth; whole families only: a rotated token kept while its family lives is what lets reuse
  detection revoke a stolen login);
- hourly usage rollups older than USAGE_HOURLY_RETENTION_DAYS merged into days (usage);
- run event streams of runs finished more than RUN_EVENTS_RETENTION_SECONDS ago, and streams of
  runs that no longer exist once idle that long (runs; streams normally expire by their own
  TTL: this is the backstop for keys that lost it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.service import purge_refresh_tokens
from backend.config import Settings
from backend.core.db import commit, utcnow
from backend.core.idempotency import purge_expired
from backend.runs.streams import purge_run_streams
from backend.usage.service import hour_bucket
from backend.usage.tasks import compact_rollups

log = structlog.get_logger()


async def maintenance(ctx: dict[str, Any], *, now: datetime | None = None) -> dict[str, int]:
    """Hourly purge; returns how many of each kind it removed (also logged)."""
    settings: Settings = ctx["settings"]
    sessionmaker: async_sessionmaker[AsyncSession] = ctx["sessionmaker"]
    now = now or utcnow()
    async with sessionmaker() as session:
        idempotency_keys = await purge_expired(session)
        refresh_tokens = await purge_refresh_tokens(
            session, before=now - timedelta(days=settings.REFRESH_TOKEN_RETENTION_DAYS)
        )
        await commit(session)
    async with sessionmaker() as session:
        rollups = await compact_rollups(
            session, before=_day(now) - timedelta(days=settings.USAGE_HOURLY_RETENTION_DAYS)
        )
        await commit(session)
    retention = timedelta(seconds=settings.RUN_EVENTS_RETENTION_SECONDS)
    async with sessionmaker() as session:
        streams = await purge_run_streams(
            session, ctx["redis"], before=now - retention, orphan_idle=retention
        )
    purged = {
        "idempotency_keys": idempotency_keys,
        "refresh_tokens": refresh_tokens,
        "rollups_compacted": rollups,
        "run_event_streams": streams,
    }
    log.info("maintenance_done", **purged)
    return purged


def _day(at: datetime) -> datetime:
    return hour_bucket(at).replace(hour=0)
