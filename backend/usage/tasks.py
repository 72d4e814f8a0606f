"""The usage domain's maintenance (called by backend/maintenance.py's hourly cron): hourly
usage rollups older than USAGE_HOURLY_RETENTION_DAYS (whole UTC days) are merged into one row
per day (bucket = midnight UTC), in one statement, sums unchanged: metrics read days × agents
× models rows for old usage instead of 24 times as many.

Usage (provider_calls, usage_rollups) is history: compacted, never purged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.usage.models import UsageRollup

log = structlog.get_logger()


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
    return cast("CursorResult[Any]", result).rowcount or 0
