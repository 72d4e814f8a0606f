"""Read side of usage: project metrics and usage totals, from pre-aggregated rollups.

Project metrics scan only the project's hourly rollup rows in the window (primary key
``(project_id, bucket, …)``), in one statement (GROUPING SETS): their cost grows with hours ×
agents × models, never with the number of runs.

Resolution: hourly buckets for the last USAGE_HOURLY_RETENTION_DAYS whole days; maintenance
merges older hours into one bucket per UTC day (midnight), sums unchanged.

Cost semantics: ``cost_usd`` is the sum of known costs; ``cost_unknown_calls`` counts provider
calls whose model has no price. When every call of a group is unpriced, ``cost_usd`` is null
(unknown, never 0); when only some are, it is a lower bound and ``cost_unknown_calls`` > 0.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Row, func, literal_column, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agents.models import Agent
from backend.core.db import utcnow
from backend.projects.dependencies import ProjectRow
from backend.usage.models import UsageRollup as R
from backend.usage.service import budget_state

Granularity = Literal["hour", "day"]
STATUSES = ("succeeded", "failed", "cancelled", "timed_out")
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
_SUMS = ("runs", *STATUSES, "calls", *_TOKENS, "cost_usd", "unknown_cost_calls")


def _sums() -> list[Any]:
    return [func.coalesce(func.sum(getattr(R, name)), 0).label(name) for name in _SUMS]


def _usage(row: Any) -> dict[str, Any]:
    """A group's counters as the API shows them (see the module docstring for cost_usd)."""
    out: dict[str, Any] = {n: int(getattr(row, n)) for n in ("runs", *STATUSES, "calls", *_TOKENS)}
    out["total_tokens"] = sum(out[name] for name in _TOKENS)
    unknown = int(row.unknown_cost_calls)
    out["cost_unknown_calls"] = unknown
    all_unknown = unknown > 0 and unknown == out["calls"]
    out["cost_usd"] = None if all_unknown else Decimal(row.cost_usd)
    return out


async def project_metrics(
    session: AsyncSession,
    project: ProjectRow,
    *,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Totals, per agent, per model and a time series over hourly buckets starting in [start, end)."""
    rows = await _grouped(session, project.id, start, end, granularity)
    totals = next(r for r in rows if r.g_agent and r.g_model and r.g_series)
    by_agent = [
        {"agent_id": r.agent_id, "name": r.name, **_usage(r)} for r in rows if not r.g_agent
    ]
    by_model = [
        {"provider": r.provider, "model": r.model, **_usage(r)} for r in rows if not r.g_model
    ]
    series = [{"bucket": r.series, **_usage(r)} for r in rows if not r.g_series]
    by_agent.sort(key=lambda a: (-a["total_tokens"], -a["runs"], str(a["agent_id"])))
    by_model.sort(key=lambda m: (m["provider"], m["model"]))
    series.sort(key=lambda s: s["bucket"])
    return {
        "window": {"from": start, "to": end, "granularity": granularity},
        "totals": _usage(totals),
        "by_agent": by_agent,
        "by_model": by_model,
        "series": series,
        "budget": await _budget(session, project, now or utcnow()),
    }


async def _grouped(
    session: AsyncSession,
    project_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity,
) -> list[Row[Any]]:
    # Literals, not bind parameters: GROUP BY must match the select list's expression.
    series = (
        R.bucket
        if granularity == "hour"
        else func.date_trunc(literal_column("'day'"), R.bucket, literal_column("'UTC'"))
    )
    where = [R.project_id == project_id]
    if start is not None:
        where.append(R.bucket >= start)
    if end is not None:
        where.append(R.bucket < end)
    grouped = (
        select(
            func.grouping(R.agent_id).label("g_agent"),
            func.grouping(R.provider, R.model).label("g_model"),
            func.grouping(series).label("g_series"),
            R.agent_id,
            R.provider,
            R.model,
            series.label("series"),
            *_sums(),
        )
        .where(*where)
        .group_by(
            func.grouping_sets(
                text("()"), tuple_(R.agent_id), tuple_(R.provider, R.model), tuple_(series)
            )
        )
        .cte("grouped")
    )
    query = select(grouped, Agent.name).outerjoin(Agent, Agent.id == grouped.c.agent_id)
    return list((await session.execute(query)).all())


async def _budget(
    session: AsyncSession, project: ProjectRow, now: datetime
) -> dict[str, Any] | None:
    state = await budget_state(session, project.id, now=now)
    if state is None:
        return None
    return {
        "monthly_cost_limit_usd": state.cost_limit,
        "monthly_token_limit": state.token_limit,
        "month_cost_usd": state.month_cost,
        "month_tokens": state.month_tokens,
        "exhausted": state.exhausted,
    }


async def usage_totals(session: AsyncSession) -> dict[str, Any]:
    """Usage over every project, deleted ones included."""
    row = (await session.execute(select(*_sums()))).one()
    return _usage(row)


async def usage_by_model(session: AsyncSession) -> list[Row[Any]]:
    query = select(R.provider, R.model, *_sums()).group_by(R.provider, R.model)
    return list((await session.execute(query)).all())


async def finished_runs(session: AsyncSession) -> dict[str, int]:
    """Runs that ended, by final status, over every project (from the rollups)."""
    row = (
        await session.execute(
            select(*(func.coalesce(func.sum(getattr(R, s)), 0).label(s) for s in STATUSES))
        )
    ).one()
    return {name: int(getattr(row, name)) for name in STATUSES}
