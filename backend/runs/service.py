"""Runs: submit, read, cancel, and the lifecycle steps shared by the API, workers and recovery.

Lock order in every transaction that touches both: the agent row, then its runs. The agent
row is what serializes an agent's claims, finishes, cancels and terminate (so the
"oldest queued run" and "no running run" guards of a claim cannot race each other).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.agents.models import AgentStatus
from backend.audit import service as audit
from backend.core import sql
from backend.core.db import after_commit, paginate, utcnow
from backend.core.errors import InvalidTransition, NotFound
from backend.core.schemas import PageParams
from backend.projects.dependencies import ProjectContext
from backend.runs import dispatch, pipeline, streams
from backend.runs import metrics as runs_metrics
from backend.runs import state as run_state
from backend.runs.models import FINISHED, ProviderCall, Run, RunStatus, RunStep
from backend.runs.pipeline import Conclusion
from backend.runs.schemas import RunCreate, RunOut, RunRow
from backend.usage import service as usage
from backend.webhooks import outbox

_LIVE = (RunStatus.queued, RunStatus.running, RunStatus.requires_action)
_DEFAULTS = sql.scalar_defaults(Run.__table__)  # status queued, attempt 0, counters zero
_COLUMNS = sorted({"timeout_seconds", "metadata", *_DEFAULTS})
# The agent key-share locked (a concurrent terminate either sees this run, and cancels it, or
# commits first, and the agent reads `terminated`; claims wait for this insert), the run
# inserted unless the agent is terminated, its run.status_changed event for the project's
# webhooks, its audit row, and, when the agent is idle, its oldest queued run before this one
# (which a claim takes first): one statement, whose answer says which of these happened.
_EVENT = outbox.ctes(
    "ev",
    outbox.EventType.run_status_changed,
    run_state.event_source(
        "submitted", where="true", from_status="CAST(NULL AS text)", now="rn.created_at"
    ),
)
_SUBMIT = sql.Statement.of(f"""
WITH a AS (
    SELECT agents.id, agents.status, agent_types.provider, agent_types.model
    FROM agents JOIN agent_types ON agent_types.id = agents.agent_type_id
    WHERE agents.id = :agent_id AND agents.project_id = :project_id
    FOR KEY SHARE OF agents
), submitted AS (
    INSERT INTO runs (id, project_id, agent_id, input, provider, model, created_at, updated_at,
        {", ".join(_COLUMNS)})
    SELECT :run_id, :project_id, a.id, :input, a.provider, a.model, :now, :now,
        {", ".join(f":{c}" for c in _COLUMNS)}
    FROM a WHERE a.status <> '{AgentStatus.terminated.value}'
    RETURNING *
), {_EVENT}, {audit.cte("audited", when="submitted")}
SELECT a.status AS agent_status, older.id AS older_id, older.attempt AS older_attempt,
    submitted.*
FROM (SELECT 1) one LEFT JOIN a ON true LEFT JOIN submitted ON true
LEFT JOIN LATERAL ({dispatch.head("a.id")}) older ON a.status = '{AgentStatus.idle.value}'""")


async def submit(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, data: RunCreate
) -> RunOut:
    """Insert a queued run (404: no such agent, 409: terminated); after commit it is announced
    and, if the agent is idle, its oldest queued run enqueued."""
    await usage.check_budget(session, ctx.project)  # project row before agent row
    run_id = uuid.uuid4()
    audited = audit.row(
        ctx.principal,
        "run.submit",
        project_id=ctx.project.id,
        target_type="run",
        target_id=run_id,
        details={"agent_id": str(agent_id)},
    )
    params = (
        _DEFAULTS
        | audit.params(audited)
        | {
            "agent_id": agent_id,
            "project_id": ctx.project.id,
            "run_id": run_id,
            "input": data.input,
            "timeout_seconds": data.timeout_seconds,
            "metadata": json.dumps(data.metadata),
            "now": utcnow(),
        }
    )
    row = await sql.fetchrow(session, _SUBMIT, params)
    assert row is not None  # one row whatever was found
    if row["agent_status"] is None:
        raise NotFound(f"Agent {agent_id} not found")
    if row["id"] is None:
        raise InvalidTransition(f"Agent {agent_id} is terminated and accepts no runs")
    dispatch.later(session, lambda d: d.publish(run_id, [(streams.STATUS, {"status": "queued"})]))
    if row["agent_status"] == AgentStatus.idle:
        if row["older_id"] is not None:
            dispatch.enqueue_later(session, row["older_id"], row["older_attempt"])
        else:
            dispatch.enqueue_later(session, run_id, row["attempt"])
    return RunOut.model_validate(RunRow(row))


_ONE = sql.Statement.of("SELECT * FROM runs WHERE id = :run_id AND project_id = :project_id")


async def get(session: AsyncSession, ctx: ProjectContext, run_id: uuid.UUID) -> RunOut:
    """The run as committed (or as this transaction wrote it)."""
    row = await sql.fetchrow(session, _ONE, {"run_id": run_id, "project_id": ctx.project.id})
    if row is None:
        raise NotFound(f"Run {run_id} not found")
    return RunOut.model_validate(RunRow(row))


async def list_runs(
    session: AsyncSession,
    ctx: ProjectContext,
    paging: PageParams,
    *,
    agent_id: uuid.UUID | None = None,
    status: RunStatus | None = None,
) -> tuple[list[Run], int]:
    where = [Run.project_id == ctx.project.id]
    if agent_id is not None:
        where.append(Run.agent_id == agent_id)
    if status is not None:
        where.append(Run.status == status.value)
    query = select(Run).where(*where).order_by(Run.created_at.desc(), Run.id.desc())
    return await paginate(session, query, paging)


_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


async def list_steps(
    session: AsyncSession, ctx: ProjectContext, run_id: uuid.UUID, paging: PageParams
) -> tuple[list[dict[str, Any]], int]:
    """The run's steps, oldest first; a model step's usage summed from its provider calls
    (every attempt) in the same query."""
    await get(session, ctx, run_id)
    calls = (
        select(
            ProviderCall.step,
            *(func.sum(getattr(ProviderCall, name)).label(name) for name in _TOKENS),
            func.coalesce(func.sum(ProviderCall.cost_usd), 0).label("cost_usd"),
            func.bool_or(ProviderCall.cost_usd.is_(None)).label("cost_unknown"),
        )
        .where(ProviderCall.run_id == run_id)
        .group_by(ProviderCall.step)
        .subquery()
    )
    query = (
        select(RunStep, calls)
        .outerjoin(calls, and_(RunStep.kind == "model", calls.c.step == RunStep.index))
        .where(RunStep.run_id == run_id)
        .order_by(RunStep.index)
    )
    total = select(func.count()).where(RunStep.run_id == run_id)
    rows, count = await paginate(session, query, paging, total=total, scalars=False)
    return [_step_fields(row) for row in rows], count


def _step_fields(row: Any) -> dict[str, Any]:
    step: RunStep = row.RunStep
    fields = {column: getattr(step, column) for column in RunStep.__table__.columns.keys()}
    fields["usage"] = None
    if step.kind == "model":
        tokens = {name: getattr(row, name) or 0 for name in _TOKENS}
        fields["usage"] = tokens | {
            "total_tokens": sum(tokens.values()),
            "cost_usd": row.cost_usd or 0,
            "cost_unknown": bool(row.cost_unknown),
        }
    return fields


async def cancel(session: AsyncSession, ctx: ProjectContext, run_id: uuid.UUID) -> RunOut:
    """Queued → cancelled at once; running → cancelled now, its worker stops within seconds."""
    run = await get(session, ctx, run_id)
    if run.status in FINISHED:
        return _audit_cancel(session, ctx, run, run.status, changed=False)
    job = {"run_id": run.id, "agent_id": run.agent_id}
    [moved] = await _cancel(session, [job]) or [None]
    run = await get(session, ctx, run_id)  # as the statement wrote it (or whoever ended it first)
    if moved is None:  # it finished meanwhile: answered unchanged
        return _audit_cancel(session, ctx, run, run.status, changed=False)
    return _audit_cancel(session, ctx, run, moved.from_status, changed=True)


def _audit_cancel(
    session: AsyncSession, ctx: ProjectContext, run: RunOut, from_status: str, *, changed: bool
) -> RunOut:
    """API.md: a cancel is audited also when it leaves the run as it was (already finished)."""
    audit.record(
        session,
        ctx.principal,
        "run.cancel",
        project_id=ctx.project.id,
        target_type="run",
        target_id=run.id,
        details={"from_status": from_status, "changed": changed},
    )
    return run


async def cancel_live_runs(
    session: AsyncSession,
    reason: str,
    *,
    agent_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
) -> int:
    """Cancel the queued and running runs of an agent (terminate) or a project (deletion), in
    the caller's transaction."""
    where: list[ColumnElement[bool]] = [Run.status.in_([s.value for s in _LIVE])]
    where += [Run.agent_id == agent_id] if agent_id else [Run.project_id == project_id]
    error = {"code": "cancelled", "message": reason[:300]}
    jobs = [
        {"run_id": run_id, "agent_id": agent, "j_error": error}
        for run_id, agent in (await session.execute(select(Run.id, Run.agent_id).where(*where)))
    ]
    return len(await _cancel(session, jobs))


async def _cancel(session: AsyncSession, jobs: list[dict[str, Any]]) -> list[Any]:
    """The worker's `cancelled` conclusion for these runs (usage counted, agent freed unless
    paused or terminated); after commit: the running ones' jobs aborted, the freed agents'
    next runs enqueued, the final events published. The rows it moved."""
    ended = await end_in(session, Conclusion.cancelled, jobs)
    for run, row in ended:
        if row.from_status == RunStatus.running:
            # Its job id carries the pre-claim attempt count.
            dispatch.later(session, _abort(run.id, run.attempt - 1))
    return [row for _, row in ended]


async def end_in(
    session: AsyncSession, kind: Conclusion, jobs: list[dict[str, Any]]
) -> list[tuple[Run, Any]]:
    """A final conclusion (`kind`) of these runs through the session, and `after_end` for each
    run it ended: (the run as committed, its statement's row)."""
    rows = await pipeline.conclude_in(session, kind, jobs)
    moved = [row for row in rows if row.moved]
    if not moved:
        return []
    runs = {
        run.id: run
        for run in await session.scalars(
            select(Run)
            .where(Run.id.in_([row.id for row in moved]))
            .execution_options(populate_existing=True)
        )
    }
    for row in moved:
        after_end(session, runs[row.id], row)
    return [(runs[row.id], row) for row in moved]


def after_end(session: AsyncSession, run: Run, row: Any) -> None:
    """After the commit of a conclusion that ended `run` (its statement's `row`): the freed
    agent's next run is enqueued, the final events published, the duration observed."""
    if row.released and row.next_id is not None:
        dispatch.later(session, _enqueue(row.next_id, row.next_attempt))
    notify_end(session, run)
    observe_end(session, run)


def _abort(run_id: uuid.UUID, attempt: int) -> Callable[[dispatch.Dispatcher], Awaitable[Any]]:
    return lambda d: d.abort(run_id, attempt)


def _enqueue(run_id: uuid.UUID, attempt: int) -> Callable[[dispatch.Dispatcher], Awaitable[Any]]:
    return lambda d: d.enqueue(run_id, attempt)


def observe_end(session: AsyncSession, run: Run) -> None:
    """After commit: the run's duration in the run-duration histogram."""
    status, started_at, finished_at = run.status, run.started_at, run.finished_at

    async def observe() -> None:
        if finished_at is not None:
            runs_metrics.observe_finished(status, started_at, finished_at)

    after_commit(session, observe)


async def on_agent_resumed(session: AsyncSession, agent_id: uuid.UUID) -> None:
    """Call in the transaction that made the agent idle (resume): its oldest queued run starts."""
    await dispatch.dispatch_head(session, agent_id)


def notify_end(session: AsyncSession, run: Run) -> None:
    """After commit: the final usage, status and `end` (the run as committed) on its stream."""
    run_id, events = run.id, streams.final_events(run)
    dispatch.later(session, lambda d: d.publish(run_id, events, final=True))


async def wait_for(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    project_id: uuid.UUID,
    run_id: uuid.UUID,
    seconds: float,
) -> Run:
    """The run once it ended or waits for an action (it cannot end before someone answers), or
    as it is after `seconds` (blocking reads on its event stream)."""
    try:
        async with asyncio.timeout(seconds):
            async for event in streams.follow(
                redis, sessionmaker, project_id, run_id, keepalive=3600
            ):
                if event is not None and event.name == streams.END:
                    break
                if event is not None and event.name == streams.REQUIRES_ACTION:
                    run = await streams.load_run(sessionmaker, project_id, run_id)
                    # Else an action already answered: keep waiting.
                    if run is not None and run.status == RunStatus.requires_action:
                        return run
    except TimeoutError:
        pass
    run = await streams.load_run(sessionmaker, project_id, run_id)
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    return run


def location(project_id: uuid.UUID, run_id: uuid.UUID) -> str:
    return f"/api/v1/projects/{project_id}/runs/{run_id}"
