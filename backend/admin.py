"""The superuser's cross-domain routes: `/admin/metrics` (runs, queue, workers and usage
together, so neither the runs nor the usage domain needs the other) and `/admin/audit-log`
(the audit domain imports no other)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from backend.access import SuperuserSession, rate_limit
from backend.audit import service as audit_service
from backend.audit.schemas import AuditEntry
from backend.core.db import Session
from backend.core.schemas import Page, Paging, error_responses
from backend.queue.jobs import Redis
from backend.runs import metrics as runs_metrics
from backend.usage import metrics as usage_metrics
from backend.usage.schemas import AdminMetrics

router = APIRouter()


async def runs_by_status(session: AsyncSession) -> dict[str, int]:
    """Live statuses from the runs table, finished ones from the usage rollups."""
    return {
        **await runs_metrics.live_runs(session),
        **await usage_metrics.finished_runs(session),
    }


async def admin_metrics(
    session: AsyncSession, redis: Redis, queue_name: str, *, now: datetime | None = None
) -> dict[str, Any]:
    workers = await runs_metrics.workers_alive(redis)
    return {
        "queue_depth": await runs_metrics.queue_depth(redis, queue_name),
        "runs_by_status": await runs_by_status(session),
        "run_duration_last_hour": await runs_metrics.run_durations(session, now=now),
        "workers": {"alive": None if workers is None else len(workers), "ids": workers},
        "usage": await usage_metrics.usage_totals(session),
    }


@router.get(
    "/admin/metrics",
    tags=["usage"],
    response_model=AdminMetrics,
    operation_id="get_admin_metrics",
    summary="Queue depth, runs by status, run durations, live workers, usage totals (superuser)",
    responses=error_responses(401, 403, 422, 429),
    dependencies=[rate_limit("metrics.admin", "30/minute")],
)
async def get_admin_metrics(principal: SuperuserSession, session: Session, request: Request):
    state = request.app.state
    return await admin_metrics(session, state.redis, state.settings.QUEUE_NAME)


@router.get(
    "/admin/audit-log",
    tags=["audit"],
    response_model=Page[AuditEntry],
    operation_id="list_audit_log",
    summary="The whole audit log (superuser)",
    responses=error_responses(401, 403, 422, 429),
    dependencies=[rate_limit("audit.admin", "60/minute")],
)
async def admin_audit_log(principal: SuperuserSession, session: Session, paging: Paging):
    return paging.build(*await audit_service.list_entries(session, paging))
