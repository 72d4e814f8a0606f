"""ARQ jobs of the runs domain, the worker heartbeat, and recovery (sweeper and reaper).

- `execute_run`: one attempt of one run (see executor).
- heartbeat (a task per worker, not a job): every WORKER_HEARTBEAT_SECONDS it refreshes the
  worker's liveness key `agentry:workers:<id>` (TTL WORKER_TTL_SECONDS) and, in one UPDATE,
  `heartbeat_at` of the runs it is executing; a run it no longer owns (cancelled, recovered)
  has its provider call cancelled.
- `sweep_runs` (cron): every agent that could start a run (idle or waiting) gets its oldest
  queued run enqueued again. Job ids make that a no-op while the job exists, so it only
  repairs lost enqueues and a lost (flushed) queue.
- `reap_runs` (cron): a running run whose heartbeat is older than its attempt timeout + grace,
  or whose worker's liveness key is gone and heartbeat is stale, is retried (back to queued,
  a new attempt) while retries remain, else failed; its agent leaves `working`. ARQ would only
  re-run a SIGKILLed job after its in-progress key expires (job timeout + 10 s): we do not wait
  for that, and when that stale job does come back the claim refuses it.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import aliased

from backend.agent_types.models import AgentType
from backend.agents.models import Agent, AgentStatus
from backend.config import Settings
from backend.core.db import commit, utcnow
from backend.core.errors import is_connection_error
from backend.core.logging import innermost_frame
from backend.runs import dispatch, executor, pipeline, streams
from backend.runs import service as runs_service
from backend.runs.attempt import WorkerState
from backend.runs.metrics import WORKER_KEY_PREFIX
from backend.runs.models import Run, RunStatus
from backend.runs.pipeline import Conclusion

log = structlog.get_logger()

# ARQ keeps aborts of ids it never saw running forever (arq#485); older ones are dropped.
ABORT_MAX_AGE_MS = 60_000
SWEEP_BATCH = 1000
# A queued run touched this recently is someone else's to enqueue (e.g. a retry's deferral).
SWEEP_MIN_AGE = timedelta(seconds=1)
LOST_WORKER_ERROR = {
    "code": "worker_lost",
    "message": "The worker running this run stopped responding",
}
ACTION_EXPIRED = {
    "code": "action_expired",
    "message": "The required action was not answered before it expired",
}


def worker_key(worker_id: str) -> str:
    return f"{WORKER_KEY_PREFIX}{worker_id}"


async def execute_run(ctx: dict[str, Any], run_id: str, attempt: int) -> str:
    try:
        return await executor.execute(ctx["runs"], uuid.UUID(run_id), int(attempt))
    except Exception as exc:  # noqa: BLE001 - logged here, without SQL or a stack trace
        # The run stays with this worker's heartbeat gone: the reaper retries or fails it.
        log.error(
            "run_job_failed",
            run_id=run_id,
            attempt=attempt,
            error_type=type(exc).__name__,
            where=innermost_frame(exc.__traceback__),
        )
        return "failed"


async def heartbeat_loop(w: WorkerState) -> None:
    while True:
        await beat(w)
        await asyncio.sleep(w.settings.WORKER_HEARTBEAT_SECONDS)


async def beat(w: WorkerState) -> None:
    """Keep the runs this worker holds, cancel those taken away, and say how the worker is:
    its liveness key (Redis), and WORKER_HEALTH_FILE when set. Never raises: what fails is
    what the health says."""
    try:
        await _keep_runs(w)
    except Exception as exc:  # noqa: BLE001 - the next beat tries again
        if is_connection_error(exc):
            w.db.available = False
        log.warning("worker_heartbeat_failed", part="database", error_type=type(exc).__name__)
    else:
        w.db.available = True
    info = {
        "pid": os.getpid(),
        "running": len(w.held),
        "redis": w.redis_ok,
        "database": w.db.available,
        "at": utcnow().isoformat(),
    }
    try:
        ttl_ms = int(w.settings.WORKER_TTL_SECONDS * 1000)
        await w.dispatcher.redis.set(worker_key(w.worker_id), json.dumps(info), px=ttl_ms)
        w.redis_ok = True
    except (RedisError, OSError) as exc:
        w.redis_ok = False
        log.warning("worker_heartbeat_failed", part="redis", error_type=type(exc).__name__)
    write_health(w.settings, {**info, "redis": w.redis_ok})


def write_health(settings: Settings, info: dict[str, Any]) -> None:
    """The worker's own view of its health, for a container healthcheck (`agentry
    worker-health`): healthy while it reaches both Redis and Postgres."""
    if not settings.WORKER_HEALTH_FILE:
        return
    path = Path(settings.WORKER_HEALTH_FILE)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps({**info, "healthy": info["redis"] and info["database"]}))
        tmp.replace(path)  # readers never see half a file
    except OSError as exc:
        log.warning("worker_health_file_failed", error_type=type(exc).__name__)


def clear_health(settings: Settings) -> None:
    """A worker that stops says so at once (a killed one's file goes stale)."""
    if settings.WORKER_HEALTH_FILE:
        Path(settings.WORKER_HEALTH_FILE).unlink(missing_ok=True)


async def _keep_runs(w: WorkerState) -> None:
    """One UPDATE: heartbeat_at of the runs still this worker's; the provider calls of the
    others (cancelled, recovered elsewhere) are cancelled. Without runs, a ping."""
    ids = sorted(w.held)
    if not ids:
        await w.db.ping()
        return
    mine = (
        select(Run.id)
        .where(
            Run.id.in_(ids),
            Run.status == RunStatus.running.value,
            Run.worker_id == w.worker_id,
        )
        .order_by(Run.id)  # the lock order of every multi-row locker of runs
        .with_for_update()
        .cte("mine")
    )
    async with w.sessionmaker() as session:
        alive = set(
            await session.scalars(
                update(Run)
                .where(Run.id == mine.c.id)
                .values(heartbeat_at=func.now())
                .returning(Run.id)
                .execution_options(synchronize_session=False)
            )
        )
        await session.commit()
    for run_id in ids:
        task = w.active.get(run_id)
        if run_id not in alive and task is not None:
            task.cancel()  # cancelled or recovered elsewhere: stop paying for it


_busy = aliased(Run)


async def sweep_runs(ctx: dict[str, Any]) -> int:
    """Enqueue the head run of up to SWEEP_BATCH agents that could start one, continuing after
    the last agent of the previous sweep (so every agent is swept, however large the backlog)."""
    w: WorkerState = ctx["runs"]
    after = w.sweep_after
    async with w.sessionmaker() as session:
        heads = (
            select(Run.agent_id, Run.id, Run.attempt, Run.updated_at)
            .join(Agent, Agent.id == Run.agent_id)
            .where(
                Run.status == RunStatus.queued.value,
                Agent.status.in_([AgentStatus.idle.value, AgentStatus.waiting.value]),
                # A run waiting for an action keeps its agent's turn: nothing to start.
                ~exists().where(
                    _busy.agent_id == Run.agent_id,
                    _busy.status == RunStatus.requires_action.value,
                ),
                *([] if after is None else [Run.agent_id > after]),
            )
            .order_by(Run.agent_id, Run.seq)
            .ext(distinct_on(Run.agent_id))
            .limit(SWEEP_BATCH)
        )
        rows = (await session.execute(heads)).all()
        now = await session.scalar(select(func.now()))
    assert now is not None
    w.sweep_after = rows[-1].agent_id if len(rows) == SWEEP_BATCH else None
    enqueued = 0
    for _, run_id, attempt, updated_at in rows:
        if updated_at > now - SWEEP_MIN_AGE:
            continue
        enqueued += await w.dispatcher.enqueue(run_id, attempt)
    await w.dispatcher.jobs.prune_aborts(ABORT_MAX_AGE_MS)
    if enqueued:
        log.info("runs_swept", enqueued=enqueued)
    return enqueued


async def reap_runs(ctx: dict[str, Any]) -> int:
    w: WorkerState = ctx["runs"]
    return await _reap_lost(w) + await expire_actions(w)


async def expire_actions(w: WorkerState) -> int:
    """Runs whose required action was not answered by its `expires_at` end failed
    (`action_expired`), freeing their agents: the `expired` conclusion, guarded by the
    deadline, so an answer that committed first wins."""
    async with w.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Run.id, Run.agent_id)
                .where(
                    Run.status == RunStatus.requires_action.value,
                    Run.action_expires_at <= func.now(),
                )
                .order_by(Run.action_expires_at)
                .limit(SWEEP_BATCH)
            )
        ).all()
        if not rows:
            return 0
        jobs = [{"run_id": r.id, "agent_id": r.agent_id, "j_error": ACTION_EXPIRED} for r in rows]
        ended = await runs_service.end_in(session, Conclusion.expired, jobs)
        await commit(session)
    if ended:
        log.warning("actions_expired", count=len(ended))
    return len(ended)


async def _reap_lost(w: WorkerState) -> int:
    stale = timedelta(seconds=2 * w.settings.WORKER_HEARTBEAT_SECONDS)
    grace = w.settings.RUN_REAP_GRACE_SECONDS
    async with w.sessionmaker() as session:
        limit = func.coalesce(Run.timeout_seconds, AgentType.timeout_seconds)
        rows = (
            await session.execute(
                select(
                    Run.id,
                    Run.agent_id,
                    Run.worker_id,
                    Run.heartbeat_at,
                    Run.attempt,
                    Run.retries,
                    AgentType.max_retries,
                    limit.label("timeout"),
                    func.now().label("now"),
                )
                .join(Agent, Agent.id == Run.agent_id)
                .join(AgentType, AgentType.id == Agent.agent_type_id)
                .where(
                    Run.status == RunStatus.running.value,
                    Run.heartbeat_at < func.now() - min(stale, timedelta(seconds=1 + grace)),
                )
            )
        ).all()
    if not rows:
        return 0
    dead = await _dead_workers(w, {r.worker_id for r in rows if r.worker_id})
    reaped = 0
    for r in rows:
        age = (r.now - r.heartbeat_at).total_seconds()
        if age > r.timeout + grace or (r.worker_id in dead and age > stale.total_seconds()):
            reaped += await reap_one(w, r)
    if reaped:
        log.warning("runs_reaped", count=reaped)
    return reaped


async def _dead_workers(w: WorkerState, worker_ids: set[str]) -> set[str]:
    """Workers whose liveness key is gone; none when Redis cannot tell (timeout rule only)."""
    ordered = sorted(worker_ids)
    try:
        async with w.dispatcher.redis.pipeline(transaction=False) as pipe:
            for worker_id in ordered:
                pipe.exists(worker_key(worker_id))
            found = await pipe.execute()
    except (RedisError, OSError):
        return set()
    return {worker_id for worker_id, n in zip(ordered, found, strict=True) if not n}


async def reap_one(w: WorkerState, r: Any) -> int:
    """Retry (back to queued, next attempt) while retries remain, else fail; free the agent.
    The worker's own retry and failure conclusions, guarded by "no heartbeat since we looked"."""
    retry = r.retries < r.max_retries
    job = {
        "run_id": r.id,
        "agent_id": r.agent_id,
        "j_worker": r.worker_id,
        "j_attempt": r.attempt,
        "j_heartbeat": r.heartbeat_at.isoformat(),
        "j_error": LOST_WORKER_ERROR,
    }
    kind = Conclusion.retry if retry else Conclusion.failed
    async with w.sessionmaker() as session:
        rows = await pipeline.conclude_in(session, kind, [job])
        if not rows or not rows[0].moved:
            return 0
        if retry:
            _requeue_after_commit(session, r.id, r.attempt)
        else:
            run = await session.get(Run, r.id, populate_existing=True)
            assert run is not None
            runs_service.after_end(session, run, rows[0])
        await commit(session)
    log.warning("run_reaped", run_id=str(r.id), worker_id=r.worker_id, retried=retry)
    return 1


def _requeue_after_commit(session: Any, run_id: uuid.UUID, attempt: int) -> None:
    """`queued` on the run's stream, and its next attempt's job."""

    async def send(d: dispatch.Dispatcher) -> None:
        await d.publish(run_id, [(streams.STATUS, {"status": "queued", "attempt": attempt})])
        await d.enqueue(run_id, attempt)

    dispatch.later(session, send)
