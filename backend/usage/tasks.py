"""Maintenance (ARQ cron ``maintenance``, registered by backend.worker): purge what has expired.

- idempotency keys older than their 24 h window;
- refresh-token families whose newest token expired more than REFRESH_TOKEN_RETENTION_DAYS ago
  (whole families only: a rotated token kept while its family lives is what lets reuse
  detection revoke a stolen login);
- hourly usage rollups older than USAGE_HOURLY_RETENTION_DAYS (whole UTC days) are merged into
  one row per day (bucket = midnight UTC), in one statement, sums unchanged: metrics read
  days × agents × models rows for old usage instead of 24 times as many;
- run event streams (``agentry:run:<id>:events``) of runs finished more than
  RUN_EVENTS_RETENTION_SECONDS ago, and streams of runs that no longer exist once idle that long.
  Streams normally expire by their own TTL; this is the backstop for keys that lost it.

Usage (provider_calls, usage_rollups) is history: compacted, never purged.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.models import RefreshToken
from backend.config import Settings
from backend.core.db import commit, utcnow
from backend.core.idempotency import purge_expired
from backend.runs.models import FINISHED, Run
from backend.usage.models import UsageRollup
from backend.usage.service import hour_bucket

log = structlog.get_logger()

_STREAM_MATCH = "agentry:run:*:events"
_SCAN_BATCH = 500


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


async def purge_refresh_tokens(session: AsyncSession, *, before: datetime) -> int:
    dead_families = (
        select(RefreshToken.family_id)
        .group_by(RefreshToken.family_id)
        .having(func.max(RefreshToken.expires_at) < before)
    )
    result = await session.execute(
        delete(RefreshToken).where(RefreshToken.family_id.in_(dead_families))
    )
    return result.rowcount or 0


def _day(at: datetime) -> datetime:
    return hour_bucket(at).replace(hour=0)


_KEY = ("project_id", "agent_id", "provider", "model")
_COUNTERS = tuple(
    c.name for c in UsageRollup.__table__.columns if not c.primary_key
)  # runs, statuses, calls, tokens, cost, unknown_cost_calls
_COMPACT = text(
    f"""
    WITH moved AS (
        DELETE FROM usage_rollups
        WHERE bucket < :before AND bucket <> date_trunc('day', bucket, 'UTC')
        RETURNING *
    )
    INSERT INTO usage_rollups (bucket, {", ".join(_KEY + _COUNTERS)})
    SELECT date_trunc('day', bucket, 'UTC'), {", ".join(_KEY)},
           {", ".join(f"sum({c})" for c in _COUNTERS)}
    FROM moved
    GROUP BY date_trunc('day', bucket, 'UTC'), {", ".join(_KEY)}
    ON CONFLICT (project_id, bucket, agent_id, provider, model) DO UPDATE SET
        {", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in _COUNTERS)}
    """
)


async def compact_rollups(session: AsyncSession, *, before: datetime) -> int:
    """Merge hourly rollups with buckets before ``before`` into daily ones; returns rows merged.

    One statement: the rows it deletes are locked and re-added as day sums atomically, so
    totals never change. A write that lands in an old hour meanwhile stays an hourly row and
    is merged by the next pass.
    """
    result = await session.execute(_COMPACT, {"before": before})
    return result.rowcount or 0


async def purge_run_streams(
    session: AsyncSession, redis: Redis, *, before: datetime, orphan_idle: timedelta
) -> int:
    """DEL the event streams of runs finished before ``before``; SCAN, so no key list is kept."""
    idle_limit = int(orphan_idle.total_seconds())
    removed = 0
    batch: list[tuple[str, uuid.UUID]] = []
    async for raw in redis.scan_iter(match=_STREAM_MATCH, count=_SCAN_BATCH):
        key = raw.decode() if isinstance(raw, bytes) else raw
        try:
            batch.append((key, uuid.UUID(key.split(":")[2])))
        except ValueError:
            continue  # not ours
        if len(batch) >= _SCAN_BATCH:
            removed += await _purge_batch(session, redis, batch, before, idle_limit)
            batch = []
    if batch:
        removed += await _purge_batch(session, redis, batch, before, idle_limit)
    return removed


async def _purge_batch(
    session: AsyncSession,
    redis: Redis,
    batch: list[tuple[str, uuid.UUID]],
    before: datetime,
    idle_limit: int,
) -> int:
    rows = await session.execute(
        select(Run.id, Run.status, Run.finished_at).where(Run.id.in_([r for _, r in batch]))
    )
    runs = {run_id: (status, finished_at) for run_id, status, finished_at in rows}
    await session.rollback()  # read-only: no transaction held across Redis calls
    doomed = []
    for key, run_id in batch:
        if run_id in runs:
            status, finished_at = runs[run_id]
            if status in FINISHED and finished_at is not None and finished_at < before:
                doomed.append(key)
        elif (await redis.object("idletime", key) or 0) >= idle_limit:
            # No such run (its project was purged, or the key is a leftover): idle long enough.
            doomed.append(key)
    return int(await redis.delete(*doomed)) if doomed else 0
