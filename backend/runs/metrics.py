"""The runs domain's operational figures: runs waiting and running, how long runs take, the
queue, the workers alive. Read by the admin metrics and the Prometheus collector; the
run-duration histogram is observed by whoever ends a run, after its transaction commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.core.db import utcnow
from backend.queue.jobs import Jobs, Redis
from backend.runs.models import Run, RunStatus

WORKER_KEY_PREFIX = "agentry:workers:"  # + worker id; written by each worker with a TTL

RUN_DURATION = Histogram(
    "agentry_run_duration_seconds",
    "Run duration (started to finished), observed after the finishing transaction commits",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


def observe_finished(status: str, started_at: datetime | None, finished_at: datetime) -> None:
    """RUN_DURATION of a run whose finishing transaction has committed."""
    if started_at is not None:
        seconds = max((finished_at - started_at).total_seconds(), 0.0)
        RUN_DURATION.labels(status).observe(seconds)


async def live_runs(session: AsyncSession) -> dict[str, int]:
    """Queued and running runs over every project (the partial index of unfinished runs)."""
    live = dict(
        (
            await session.execute(
                select(Run.status, func.count())
                .where(Run.status.in_([RunStatus.queued, RunStatus.running]))
                .group_by(Run.status)
            )
        ).all()
    )
    return {"queued": live.get("queued", 0), "running": live.get("running", 0)}


async def run_durations(session: AsyncSession, *, now: datetime | None = None) -> dict[str, Any]:
    """p50 / p95 of (finished_at - started_at) over runs finished in the hour before ``now``."""
    now = now or utcnow()
    seconds = func.extract("epoch", Run.finished_at - Run.started_at)
    row = (
        await session.execute(
            select(
                func.count(),
                func.percentile_cont(0.5).within_group(seconds),
                func.percentile_cont(0.95).within_group(seconds),
            ).where(
                Run.finished_at >= now - timedelta(hours=1),
                Run.finished_at <= now,
                Run.started_at.is_not(None),
            )
        )
    ).one()
    count, p50, p95 = row
    return {
        "window_seconds": 3600,
        "count": count,
        "p50_seconds": None if p50 is None else round(float(p50), 3),
        "p95_seconds": None if p95 is None else round(float(p95), 3),
    }


async def queue_depth(redis: Redis, queue_name: str) -> int | None:
    """Jobs waiting in the ARQ queue (a sorted set); None when Redis does not answer."""
    try:
        return await Jobs(redis, queue_name).depth()
    except Exception:  # noqa: BLE001 - Redis down: metrics still answer, from Postgres
        return None


async def workers_alive(redis: Redis) -> list[str] | None:
    """Ids of workers whose heartbeat key has not expired; None when Redis does not answer."""
    try:
        keys = [k async for k in redis.scan_iter(match=f"{WORKER_KEY_PREFIX}*", count=500)]
    except Exception:  # noqa: BLE001 - see queue_depth
        return None
    return sorted(
        (k.decode() if isinstance(k, bytes) else k).removeprefix(WORKER_KEY_PREFIX) for k in keys
    )
