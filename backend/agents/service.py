"""Agent instances: spawn, read, update, and lifecycle actions (through state.transition).

Reads are one statement: the agent joined to its type, with its pending runs counted
by a correlated subquery on the partial index of unfinished runs. The project's name
and slug come from the already authorized ProjectContext, so no join is needed. A spawn is
one statement too (locks, insert, webhook event): `_SPAWN`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import bindparam, column, func, select, table, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agent_types.models import AgentType
from backend.agents import state
from backend.agents.models import Agent, AgentEvent, AgentStatus
from backend.agents.schemas import AgentCreate, AgentMetrics, AgentOut, AgentUpdate
from backend.audit import service as audit
from backend.core import sql
from backend.core.db import paginate, utcnow
from backend.core.errors import Conflict, NotFound, ValidationFailed
from backend.core.schemas import PageParams
from backend.projects.dependencies import ProjectContext
from backend.webhooks import outbox

agents, types = Agent.__table__, AgentType.__table__
# The runs of an agent, for its pending count (runs depend on agents, not the other way round).
runs = table("runs", column("agent_id"), column("status"))
# Literal statuses (not bind parameters) so the planner can use ix_runs_unfinished.
_UNFINISHED = text("runs.status IN ('queued', 'running')")
_PENDING = (
    select(func.count())
    .select_from(runs)
    .where(runs.c.agent_id == agents.c.id, _UNFINISHED)
    .correlate(agents)
    .scalar_subquery()
)
_ROWS = select(
    *agents.c,
    types.c.name.label("agent_type_name"),
    types.c.slug.label("agent_type_slug"),
    _PENDING.label("pending_runs"),
).select_from(agents.join(types, types.c.id == agents.c.agent_type_id))
# Built once (building the expression per request costs more than running it).
_ONE = sql.Statement.compiled(
    _ROWS.where(agents.c.id == bindparam("agent_id"), agents.c.project_id == bindparam("pid"))
)
_ACTIVE = (AgentStatus.working.value, AgentStatus.waiting.value)
_TERMINATED = AgentStatus.terminated.value
# The model's scalar column defaults (status idle, counters zero): a spawn writes them as the
# ORM would.
_DEFAULTS = sql.scalar_defaults(agents)
_COLUMNS = ", ".join(sorted({"current_task", "short_term_memory", *_DEFAULTS}))
_VALUES = ", ".join(
    f":{name}" for name in sorted({"current_task", "short_term_memory", *_DEFAULTS})
)
# The project row key-share locked against its deletion (which takes FOR UPDATE first: a spawn
# commits before it, its agent terminated with the others, or waits and finds it deleted), the
# type share-locked until commit (a concurrent delete or deactivation of the type waits for
# us), the agent inserted when both are there and the type is active, and its
# agent.status_changed event for the project's webhooks, and its audit row: one statement,
# whose answer says which of these was missing.
_EVENT = outbox.ctes(
    "ev",
    outbox.EventType.agent_status_changed,
    state.event_source(
        "spawned",
        where="true",
        from_status="CAST(NULL AS text)",
        to="m.status",
        reason="NULL",
        now="m.created_at",
        pending_runs="0",
    ),
)
_SPAWN = sql.Statement.of(f"""
WITH p AS (
    SELECT id FROM projects WHERE id = :project_id AND deleted_at IS NULL FOR KEY SHARE
), t AS (
    SELECT id, name, slug, is_active FROM agent_types
    WHERE id = :agent_type_id AND deleted_at IS NULL FOR SHARE
), spawned AS (
    INSERT INTO agents (id, project_id, agent_type_id, name, created_at, updated_at, {_COLUMNS})
    SELECT :agent_id, p.id, t.id, :name, :now, :now, {_VALUES}
    FROM p, t WHERE t.is_active
    RETURNING *
), {_EVENT}, {audit.cte("audited", when="spawned")}
SELECT (SELECT count(*) FROM p) AS project_found, t.slug AS agent_type_slug,
    t.name AS agent_type_name, t.is_active AS agent_type_active, spawned.*
FROM (SELECT 1) one LEFT JOIN t ON true LEFT JOIN spawned ON true""")


def _out(row: Any, ctx: ProjectContext, pending_runs: int | None = None) -> AgentOut:
    out = dict(row)
    out["project_name"], out["project_slug"] = ctx.project.name, ctx.project.slug
    if pending_runs is not None:
        out["pending_runs"] = pending_runs
    return AgentOut.model_validate(out)


def _actor(ctx: ProjectContext) -> dict[str, Any]:
    key = ctx.principal.api_key
    return {"actor_user_id": ctx.principal.user.id, "actor_api_key_id": key.id if key else None}


def _audit_row(
    ctx: ProjectContext, action: str, agent_id: uuid.UUID, **details: Any
) -> audit.AuditRow:
    return audit.row(
        ctx.principal,
        action,
        project_id=ctx.project.id,
        target_type="agent",
        target_id=agent_id,
        details=details or None,
    )


def _audit(
    session: AsyncSession, ctx: ProjectContext, action: str, agent_id: uuid.UUID, **details: Any
) -> None:
    audit.add(session, _audit_row(ctx, action, agent_id, **details))


async def get(session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID) -> AgentOut:
    row = await sql.fetchrow(session, _ONE, {"agent_id": agent_id, "pid": ctx.project.id})
    if row is None:
        raise NotFound(f"Agent {agent_id} not found")
    return _out(row, ctx)


async def list_agents(
    session: AsyncSession,
    ctx: ProjectContext,
    paging: PageParams,
    *,
    status: AgentStatus | None = None,
    agent_type_id: uuid.UUID | None = None,
) -> tuple[list[AgentOut], int]:
    """Two statements whatever the page size: the count, then the page with its joins."""
    where = [agents.c.project_id == ctx.project.id]
    if status is not None:
        where.append(agents.c.status == status.value)
    if agent_type_id is not None:
        where.append(agents.c.agent_type_id == agent_type_id)
    count = select(func.count()).select_from(agents).where(*where)  # without the joins
    query = _ROWS.where(*where).order_by(agents.c.created_at.desc(), agents.c.id.desc())
    rows, total = await paginate(session, query, paging, total=count, scalars=False)
    # Plain tuples zipped with the keys once: no RowMapping, no ORM attribute read per row.
    keys = [*_ROWS.selected_columns.keys(), "project_name", "project_slug"]
    project = (ctx.project.name, ctx.project.slug)
    outs = [AgentOut.model_validate(dict(zip(keys, (*row, *project), strict=True))) for row in rows]
    return outs, total


async def spawn(session: AsyncSession, ctx: ProjectContext, data: AgentCreate) -> AgentOut:
    if data.project_id is not None and data.project_id != ctx.project.id:
        raise ValidationFailed("project_id must match the project in the path", field="project_id")
    agent_id = uuid.uuid4()
    details = {"agent_type_id": str(data.agent_type_id)}
    params = _DEFAULTS | audit.params(_audit_row(ctx, "agent.spawn", agent_id, **details))
    params |= {
        "project_id": ctx.project.id,
        "agent_type_id": data.agent_type_id,
        "agent_id": agent_id,
        "name": data.name,
        "current_task": data.current_task,
        "short_term_memory": json.dumps(data.short_term_memory),
        "now": utcnow(),
    }
    row = await sql.fetchrow(session, _SPAWN, params)
    assert row is not None  # one row whatever was found
    if not row["project_found"]:
        raise NotFound(f"Project {ctx.project.id} not found")
    if row["agent_type_slug"] is None:
        raise NotFound(f"Agent type {data.agent_type_id} not found")
    if not row["agent_type_active"]:
        # API.md: an inactive type is a 422 naming agent_type_id (the schema cannot state it).
        slug = row["agent_type_slug"]
        raise ValidationFailed(f"Agent type '{slug}' is inactive", field="agent_type_id")
    return _out(row, ctx, pending_runs=0)


def _terminal_values() -> dict[str, Any]:
    return {"terminated_at": utcnow(), "session_id": None, "current_task": None}


async def _move(
    session: AsyncSession,
    ctx: ProjectContext,
    agent_id: uuid.UUID,
    to: AgentStatus,
    *,
    reason: str,
    only_from: set[AgentStatus] | None = None,
    **values: Any,
) -> state.Moved:
    if to == AgentStatus.terminated:
        values |= _terminal_values()
    moved = await state.transition(
        session,
        agent_id,
        to,
        project_id=ctx.project.id,
        only_from=only_from,
        reason=reason,
        **_actor(ctx),
        **values,
    )
    return moved  # what it means for the agent's runs: backend/lifecycle.py


async def update(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, data: AgentUpdate
) -> None:
    """Other fields are written by the same statement as the status change, if any."""
    fields = data.model_dump(include=data.model_fields_set - {"status"})
    if data.status is not None:
        await _move(session, ctx, agent_id, data.status, reason="update", **fields)
    elif fields:
        await _update_fields(session, ctx, agent_id, fields)
    else:
        await get(session, ctx, agent_id)  # 404 when it is not there
        return
    _audit(
        session,
        ctx,
        "agent.update",
        agent_id,
        fields=sorted(data.model_fields_set),
        **({"status": data.status.value} if data.status else {}),
    )


async def _update_fields(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, fields: dict[str, Any]
) -> None:
    # Guarded like a transition: a terminated agent is read-only (no read-then-write).
    changed = await session.scalar(
        sql_update(Agent)
        .where(
            agents.c.id == agent_id,
            agents.c.project_id == ctx.project.id,
            agents.c.status != _TERMINATED,
        )
        .values(**fields, updated_at=utcnow())
        .returning(agents.c.id)
    )
    if changed is None:
        await get(session, ctx, agent_id)  # 404 when it is not there
        raise Conflict(f"Agent {agent_id} is terminated and cannot be changed", field="status")


async def pause(session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID) -> None:
    await _move(session, ctx, agent_id, AgentStatus.paused, reason="pause")
    _audit(session, ctx, "agent.pause", agent_id)


async def resume(session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID) -> None:
    # Only a paused agent resumes: idle is also reachable from working/waiting, but that
    # is the worker's move (PATCH status=idle), not a resume.
    await _move(
        session, ctx, agent_id, AgentStatus.idle, reason="resume", only_from={AgentStatus.paused}
    )
    _audit(session, ctx, "agent.resume", agent_id)


async def terminate(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, *, reason: str | None = None
) -> state.Moved:
    """Terminate an agent: terminated_at set, session and current task cleared."""
    agent = await _move(
        session, ctx, agent_id, AgentStatus.terminated, reason=reason or "terminate"
    )
    _audit(session, ctx, "agent.terminate", agent.id)
    return agent


async def terminate_all(session: AsyncSession, ctx: ProjectContext, *, reason: str) -> None:
    """Terminate every live agent of the project in one statement (project deletion)."""
    ids = await state.transition_project(
        session,
        ctx.project.id,
        AgentStatus.terminated,
        reason=reason,
        **_actor(ctx),
        **_terminal_values(),
    )
    for agent_id in ids:
        _audit(session, ctx, "agent.terminate", agent_id, reason=reason)


async def project_metrics(session: AsyncSession, ctx: ProjectContext) -> AgentMetrics:
    """Totals over every agent of the project, terminated ones included."""
    row = (
        (
            await session.execute(
                select(
                    func.count().label("total_instances"),
                    func.count().filter(agents.c.status.in_(_ACTIVE)).label("active_instances"),
                    func.count()
                    .filter(agents.c.status == AgentStatus.idle.value)
                    .label("idle_instances"),
                    func.coalesce(func.sum(agents.c.tasks_completed), 0).label(
                        "total_tasks_completed"
                    ),
                    func.coalesce(func.sum(agents.c.tokens_used), 0).label("total_tokens_used"),
                    func.coalesce(func.sum(agents.c.cost_incurred), 0).label("total_cost_incurred"),
                ).where(agents.c.project_id == ctx.project.id)
            )
        )
        .mappings()
        .one()
    )
    return AgentMetrics.model_validate(row)


async def agent_metrics(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID
) -> AgentMetrics:
    row = (
        await session.execute(
            select(
                agents.c.status,
                agents.c.tasks_completed,
                agents.c.tokens_used,
                agents.c.cost_incurred,
            ).where(agents.c.id == agent_id, agents.c.project_id == ctx.project.id)
        )
    ).first()
    if row is None:
        raise NotFound(f"Agent {agent_id} not found")
    return AgentMetrics(
        total_instances=1,
        active_instances=int(row.status in _ACTIVE),
        idle_instances=int(row.status == AgentStatus.idle.value),
        total_tasks_completed=row.tasks_completed,
        total_tokens_used=row.tokens_used,
        total_cost_incurred=row.cost_incurred,
    )


async def list_events(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, paging: PageParams
) -> tuple[list[AgentEvent], int]:
    """The agent's transitions, oldest first (seq orders those of one transaction too)."""
    events = AgentEvent.__table__
    visible = (
        select(agents.c.id)
        .where(agents.c.id == agent_id, agents.c.project_id == ctx.project.id)
        .exists()
    )
    count = select(func.count()).select_from(events).where(events.c.agent_id == agent_id)
    found, total = (await session.execute(select(visible, count.scalar_subquery()))).one()
    if not found:
        raise NotFound(f"Agent {agent_id} not found")
    if total <= paging.offset:
        return [], total
    rows = await session.scalars(
        select(AgentEvent)
        .where(AgentEvent.agent_id == agent_id)
        .order_by(AgentEvent.seq)
        .offset(paging.offset)
        .limit(paging.limit)
    )
    return list(rows), total
