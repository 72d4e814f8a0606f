"""Runs: submit, read, cancel, and the lifecycle steps shared by the API, workers and recovery.

Lock order in every transaction that touches both: the agent row, then its runs. The agent
row is what serializes an agent's claims, finishes, cancels and terminate (so the
"oldest queued run" and "no running run" guards of a claim cannot race each other).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.agent_types.models import AgentType
from backend.agents import state as agent_state
from backend.agents.models import Agent, AgentStatus
from backend.audit import service as audit
from backend.core.db import utcnow
from backend.core.errors import InvalidTransition, NotFound
from backend.core.schemas import PageParams
from backend.projects.dependencies import ProjectContext
from backend.runs import dispatch, streams
from backend.runs import state as run_state
from backend.runs.models import FINISHED, Run, RunStatus
from backend.runs.schemas import RunCreate
from backend.usage import service as usage

_LIVE = (RunStatus.queued, RunStatus.running)


async def lock_agent(session: AsyncSession, agent_id: uuid.UUID) -> None:
    """Take the agent row first (FOR NO KEY UPDATE: submits' key-share locks still pass)."""
    await session.execute(
        select(Agent.id).where(Agent.id == agent_id).with_for_update(key_share=True)
    )


async def submit(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, data: RunCreate
) -> Run:
    """Insert a queued run; after commit it is announced and, if the agent is idle, enqueued."""
    await usage.check_budget(session, ctx.project)  # project row before agent row
    row = await _submittable_agent(session, ctx, agent_id)
    run = Run(
        id=uuid.uuid4(),
        project_id=ctx.project.id,
        agent_id=agent_id,
        status=RunStatus.queued.value,
        input=data.input,
        provider=row.provider,
        model=row.model,
        timeout_seconds=data.timeout_seconds,
        run_metadata=data.metadata,
        attempt=0,
    )
    session.add(run)
    await session.flush()
    audit.record(
        session,
        ctx.principal,
        "run.submit",
        project_id=ctx.project.id,
        target_type="run",
        target_id=run.id,
        details={"agent_id": str(agent_id)},
    )
    run_id = run.id
    dispatch.later(session, lambda d: d.publish(run_id, [(streams.STATUS, {"status": "queued"})]))
    if row.status == AgentStatus.idle:
        await dispatch.dispatch_head(session, agent_id)
    return run


_SUBMITTABLE = (  # built once, like every per-request statement of a hot route
    select(Agent.status, AgentType.provider, AgentType.model)
    .join(AgentType, AgentType.id == Agent.agent_type_id)
    .where(Agent.id == bindparam("agent_id"), Agent.project_id == bindparam("project_id"))
    .with_for_update(of=Agent, read=True, key_share=True)
)


async def _submittable_agent(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID
) -> Any:
    """The agent's status and type, key-share locked; 404 when absent, 409 when terminated.

    The lock: a concurrent terminate either sees this run (and cancels it) or commits first
    (and this submit sees `terminated`); claims wait for this insert.
    """
    params = {"agent_id": agent_id, "project_id": ctx.project.id}
    row = (await session.execute(_SUBMITTABLE, params)).first()
    if row is None:
        raise NotFound(f"Agent {agent_id} not found")
    if row.status == AgentStatus.terminated:
        raise InvalidTransition(f"Agent {agent_id} is terminated and accepts no runs")
    return row


async def get(session: AsyncSession, ctx: ProjectContext, run_id: uuid.UUID) -> Run:
    run = await session.scalar(
        select(Run).where(Run.id == run_id, Run.project_id == ctx.project.id)
    )
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    return run


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
    total = await session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    rows = await session.scalars(
        select(Run)
        .where(*where)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .offset(paging.offset)
        .limit(paging.limit)
    )
    return list(rows), total


async def cancel(session: AsyncSession, ctx: ProjectContext, run_id: uuid.UUID) -> Run:
    """Queued → cancelled at once; running → cancelled now, its worker stops within seconds."""
    run = await get(session, ctx, run_id)
    if RunStatus(run.status) in FINISHED:
        return _audit_cancel(session, ctx, run, RunStatus(run.status), changed=False)
    await lock_agent(session, run.agent_id)
    now = utcnow()
    moved = await run_state.transition_one(
        session, run_id, RunStatus.cancelled, finished_at=now, cancel_requested_at=now
    )
    if moved is None:  # it finished meanwhile: answered unchanged
        await session.refresh(run)
        return _audit_cancel(session, ctx, run, RunStatus(run.status), changed=False)
    run, was = moved
    await finish_cancelled(session, run, was)
    if was is RunStatus.running or run.attempt > 0:
        await release_agent(session, run.agent_id, run.id, reason="run cancelled")
    return _audit_cancel(session, ctx, run, was, changed=True)


def _audit_cancel(
    session: AsyncSession, ctx: ProjectContext, run: Run, was: RunStatus, *, changed: bool
) -> Run:
    """API.md: a cancel is audited also when it leaves the run as it was (already finished)."""
    audit.record(
        session,
        ctx.principal,
        "run.cancel",
        project_id=ctx.project.id,
        target_type="run",
        target_id=run.id,
        details={"from_status": was.value, "changed": changed},
    )
    return run


async def finish_cancelled(session: AsyncSession, run: Run, was: RunStatus) -> None:
    """Side effects of a run just cancelled (in its transaction): usage, worker abort, events."""
    await usage.record_run_finished(session, run)
    if was is RunStatus.running:
        run_id, attempt = run.id, run.attempt - 1  # its job id carries the pre-claim count
        dispatch.later(session, lambda d: d.abort(run_id, attempt))
    notify_end(session, run)


async def cancel_live_runs(
    session: AsyncSession,
    reason: str,
    *,
    agent_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
) -> int:
    """Cancel the queued and running runs of an agent (terminate) or a project (deletion), in
    the caller's transaction."""
    now = utcnow()
    moved = await run_state.transition(
        session,
        RunStatus.cancelled,
        agent_id=agent_id,
        project_id=project_id,
        only_from=_LIVE,
        finished_at=now,
        cancel_requested_at=now,
        error={"code": "cancelled", "message": reason[:300]},
    )
    for run, was in moved:
        await finish_cancelled(session, run, was)
    return len(moved)


async def on_agent_resumed(session: AsyncSession, agent_id: uuid.UUID) -> None:
    """Call in the transaction that made the agent idle (resume): its oldest queued run starts."""
    await dispatch.dispatch_head(session, agent_id)


on_agent_idle = on_agent_resumed


async def release_agent(
    session: AsyncSession, agent_id: uuid.UUID, run_id: uuid.UUID, *, reason: str
) -> bool:
    """Agent back to idle after its run ended (unless paused/terminated meanwhile); next run."""
    running = await session.scalar(
        select(
            exists().where(
                Run.agent_id == agent_id,
                Run.status == RunStatus.running.value,
                Run.id != run_id,
            )
        )
    )
    if running:
        return False
    try:
        await agent_state.transition(
            session,
            agent_id,
            AgentStatus.idle,
            only_from={AgentStatus.working, AgentStatus.waiting},
            run_id=run_id,
            reason=reason,
        )
    except (InvalidTransition, NotFound):
        return False  # paused or terminated while the run ran: leave it so
    await dispatch.dispatch_head(session, agent_id)
    return True


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
    """The run once it ended, or as it is after `seconds` (blocking reads on its event stream)."""
    try:
        async with asyncio.timeout(seconds):
            async for event in streams.follow(
                redis, sessionmaker, project_id, run_id, keepalive=3600
            ):
                if event is not None and event.name == streams.END:
                    break
    except TimeoutError:
        pass
    run = await streams.load_run(sessionmaker, project_id, run_id)
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    return run


def location(project_id: uuid.UUID, run_id: uuid.UUID) -> str:
    return f"/api/v1/projects/{project_id}/runs/{run_id}"
