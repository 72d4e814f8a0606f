"""The worker: `agentry worker` (a process), or in-process with `await run_worker(settings)`
(`agentry dev`, tests): the queue's worker (backend/queue) wired to the runs domain.

ctx built at startup: settings, engine, sessionmaker (its sessions can dispatch runs),
redis (ARQ's pool), runs (the executor's WorkerState), and the heartbeat task.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import uuid
from typing import Any

import structlog

from backend.config import Settings, get_settings
from backend.core.db import create_engine, create_sessionmaker
from backend.core.logging import configure_logging, innermost_frame
from backend.maintenance import maintenance
from backend.queue import worker as queue_worker
from backend.runs import dispatch, pipeline, tasks
from backend.runs.attempt import WorkerState
from backend.runs.schemas import MAX_TIMEOUT_SECONDS
from backend.webhooks import tasks as webhook_tasks

log = structlog.get_logger()

# Longer than any attempt (attempts time themselves out); ARQ's timeout is only a backstop.
JOB_TIMEOUT_SECONDS = MAX_TIMEOUT_SECONDS + 60
CRON_TIMEOUT_SECONDS = 60
ORM_POOL_SIZE = 5
MAX_TAKES = 5  # times a job is taken (by workers that died before finishing it) before dropped


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    # Runs are claimed and concluded on the pipeline's asyncpg pool; the ORM engine serves
    # only the heartbeat, the sweeper, the reaper and maintenance: a few connections.
    engine = create_engine(
        settings.DATABASE_URL,  # type: ignore[arg-type]
        pool_size=min(settings.DB_POOL_SIZE, ORM_POOL_SIZE),
        max_overflow=min(settings.DB_MAX_OVERFLOW, ORM_POOL_SIZE),
    )
    sessionmaker = create_sessionmaker(engine)
    dispatcher = dispatch.Dispatcher(ctx["redis"], settings)
    if isinstance(ctx.get("worker"), AgentryWorker):
        dispatcher.on_enqueue = ctx["worker"].wake  # its next poll takes the job at once
    dispatch.install(sessionmaker, dispatcher)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    db = await queue_worker.until_connected(
        "database", lambda: pipeline.Pipeline.connect(settings, worker_id)
    )
    state = WorkerState(sessionmaker, dispatcher, settings, worker_id, db)
    ctx.update(engine=engine, sessionmaker=sessionmaker, runs=state)
    await tasks.beat(state)  # alive before the first job
    ctx["heartbeat"] = asyncio.create_task(tasks.heartbeat_loop(state))
    webhook_tasks.start(ctx)  # deliveries: tasks and connections of their own
    log.info("worker_started", worker_id=worker_id, queue=settings.QUEUE_NAME)


async def shutdown(ctx: dict[str, Any]) -> None:
    heartbeat: asyncio.Task[None] | None = ctx.pop("heartbeat", None)
    if heartbeat is not None:
        heartbeat.cancel()
    await webhook_tasks.stop(ctx)
    state: WorkerState | None = ctx.get("runs")
    if state is not None:
        await state.dispatcher.events.flush()  # the last runs' events
        try:
            await state.dispatcher.redis.delete(tasks.worker_key(state.worker_id))
        except Exception:  # noqa: BLE001 - the key expires anyway
            log.warning("worker_key_delete_failed", exc_info=True)
        tasks.clear_health(state.settings)
    if state is not None:
        await state.mcp.aclose()
        await state.db.close()
    engine = ctx.pop("engine", None)
    if engine is not None:
        await engine.dispose()


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of AgentryWorker for these settings."""
    if not settings.DATABASE_URL or not settings.REDIS_URL:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be set to run a worker")
    every = set(range(0, 60, settings.RUN_SWEEP_INTERVAL_SECONDS))
    return queue_worker.options(
        jobs=[
            queue_worker.Job(
                tasks.execute_run,
                name=dispatch.EXECUTE_RUN,
                timeout=JOB_TIMEOUT_SECONDS,
                # Retries are ours (new attempt, new job id), never the queue's; a job taken
                # again after its worker died (its lease expired) runs again, and the claim
                # refuses it if that attempt had already started.
                max_tries=MAX_TAKES,
            )
        ],
        crons=[
            queue_worker.Cron(
                tasks.sweep_runs, second=every, run_at_startup=True, timeout=CRON_TIMEOUT_SECONDS
            ),
            queue_worker.Cron(tasks.reap_runs, second=every, timeout=CRON_TIMEOUT_SECONDS),
            queue_worker.Cron(maintenance, minute={7}, second={0}, timeout=600),
            queue_worker.Cron(webhook_tasks.purge_events, minute={37}, second={0}, timeout=600),
        ],
        redis_url=settings.REDIS_URL,
        queue_name=settings.QUEUE_NAME,
        max_jobs=settings.WORKER_MAX_JOBS,
        poll_delay=settings.WORKER_POLL_DELAY_SECONDS,
        job_timeout=JOB_TIMEOUT_SECONDS,
        lease_seconds=settings.WORKER_LEASE_SECONDS,
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings},
    )


class AgentryWorker(queue_worker.QueueWorker):
    """The queue's worker, telling the runs domain how it is (health, /ready)."""

    def on_redis(self, ok: bool) -> None:
        state: WorkerState | None = self.ctx.get("runs")
        if state is not None:
            state.redis_ok = ok

    def health(self) -> str:
        """Whether this worker can run runs (/ready of its process): `ok`, or what it lacks."""
        state: WorkerState | None = self.ctx.get("runs")
        if self.main_task is not None and self.main_task.done():
            return "stopped"
        if state is None:
            return "starting"
        if not state.redis_ok:
            return "unavailable (redis)"
        return "ok" if state.db.available else "unavailable (database)"


async def run_worker(settings: Settings, *, burst: bool = False) -> AgentryWorker:
    """Start a worker on the running event loop; stop it with `await worker.close()`.

    With burst=True it stops by itself once the queue is empty (`await worker.main_task`).
    """
    worker = AgentryWorker(**worker_options(settings), burst=burst, handle_signals=False)
    worker.main_task = asyncio.create_task(worker.main())
    worker.main_task.add_done_callback(_log_crash)
    return worker


def _log_crash(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        log.error(
            "worker_crashed",
            error_type=type(exc).__name__,
            where=innermost_frame(exc.__traceback__),
        )


def main() -> None:
    """`agentry worker`: a worker process until SIGINT/SIGTERM (a stopping worker requeues
    its running runs)."""
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    _use_uvloop()
    # What is loaded by now lives as long as the process: keep the collector from walking it
    # again and again (a full collection stalled a burst of runs by ~0.2 s).
    gc.collect()
    gc.freeze()
    AgentryWorker(**worker_options(settings)).run()


def _use_uvloop() -> None:
    """uvloop when installed (uvicorn[standard] brings it): less CPU per job than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
