from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.access import MetricsReader, rate_limit
from backend.core.db import Session
from backend.core.schemas import error_responses
from backend.usage import metrics
from backend.usage.schemas import MetricsQuery, ProjectMetrics

router = APIRouter()


@router.get(
    "/projects/{project_id}/metrics",
    response_model=ProjectMetrics,
    operation_id="get_project_metrics",
    summary="Project usage: totals, per agent, per model, a time series and the budget",
    description=(
        "Read from hourly rollups. `from`/`to` select hourly buckets whose start lies in "
        "[from, to) (default: all time); `granularity` sets the series bucket (UTC). Usage "
        "older than a few days (USAGE_HOURLY_RETENTION_DAYS) is kept per day. "
        "Runs count once each, when finished; tokens and cost count every provider call. "
        "`cost_usd` is null when no call of the group had a known price."
    ),
    responses=error_responses(401, 403, 404, 422, 429),
    dependencies=[rate_limit("metrics.project", "60/minute")],
)
async def project_metrics(
    ctx: MetricsReader, session: Session, query: Annotated[MetricsQuery, Query()]
):
    return await metrics.project_metrics(
        session, ctx.project, start=query.start, end=query.end, granularity=query.granularity
    )
