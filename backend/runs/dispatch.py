"""The thin interface between runs and ARQ: enqueue an attempt, abort it, publish its events.

Job ids are `run:<run_id>:<attempt>`, where attempt is how many attempts the run had started
when it was dispatched. So:
- enqueueing the same queued run twice (submit, dispatch-next, resume, sweeper) is refused by
  ARQ as a duplicate id: idempotent, and a retry's deferred job keeps its backoff;
- a retry or a recovery after a lost worker gets a new id, so ARQ's refusal of a duplicate id
  and a SIGKILLed job's still-held in-progress key never block it;
- a stale re-delivery of an old job (ARQ re-runs a SIGKILLed job when its in-progress key
  expires) carries an old attempt number, and the claim refuses it;
- an abort (arq#485: it lingers until a job with that id starts) can only ever name the
  attempt of a run that is already cancelled, so a ghost abort hits nothing that matters.

Jobs are enqueued only after the transaction that made the run dispatchable has committed
(`after_commit`); if that enqueue is lost, the sweeper re-derives it from the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.core import sql
from backend.core.db import after_commit
from backend.queue.jobs import Jobs, Redis
from backend.runs import streams
from backend.runs.models import RunStatus

log = structlog.get_logger()

EXECUTE_RUN = "execute_run"
_INFO_KEY = "runs.dispatcher"


def job_id(run_id: uuid.UUID | str, attempt: int) -> str:
    return f"run:{run_id}:{attempt}"


class Dispatcher:
    """What a process (API or worker) needs to hand runs to workers and tell readers about them."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.jobs = Jobs(redis, settings.QUEUE_NAME)
        self.events = streams.Publisher(redis, settings)
        # Called after a job due now was queued (a worker's own poll loop takes it at once).
        self.on_enqueue: Callable[[], None] | None = None

    async def enqueue(self, run_id: uuid.UUID, attempt: int, *, defer: float | None = None) -> bool:
        """True when a new job was queued; False when that attempt's job already exists."""
        args = (str(run_id), attempt)
        queued = await self.jobs.enqueue(EXECUTE_RUN, args, job_id(run_id, attempt), defer=defer)
        if queued and not defer and self.on_enqueue is not None:
            self.on_enqueue()
        return queued

    async def abort(self, run_id: uuid.UUID, attempt: int) -> None:
        """Ask the worker running that attempt to stop it (seen at its next poll)."""
        await self.jobs.abort(job_id(run_id, attempt))

    async def publish(
        self, run_id: uuid.UUID, events: list[tuple[str, dict[str, Any]]], *, final: bool = False
    ) -> None:
        await self.events.publish(run_id, events, final=final)


def install(sessionmaker: async_sessionmaker[AsyncSession], dispatcher: Dispatcher) -> None:
    """Every session of this sessionmaker can dispatch (`session.info`), API and worker alike."""
    info = dict(sessionmaker.kw.get("info") or {})
    info[_INFO_KEY] = dispatcher
    sessionmaker.configure(info=info)


def of(session: AsyncSession) -> Dispatcher | None:
    return session.info.get(_INFO_KEY)


def later(session: AsyncSession, action: Callable[[Dispatcher], Awaitable[Any]]) -> None:
    """Run `action` with the session's dispatcher once the transaction has committed.

    Without a dispatcher (a bare session, e.g. a script) nothing is sent: the sweeper and
    stream readers repair from the database.
    """
    dispatcher = of(session)
    if dispatcher is None:
        log.debug("runs_dispatch_skipped_no_dispatcher")
        return
    after_commit(session, lambda: action(dispatcher))


def head(agent_id: str) -> str:
    """SQL of the agent's oldest queued run (id, attempt): the only one a claim accepts."""
    return f"""SELECT id, attempt FROM runs
    WHERE agent_id = {agent_id} AND status = '{RunStatus.queued.value}' ORDER BY seq LIMIT 1"""


_HEAD = sql.Statement.of(head(":agent_id"))


def enqueue_later(session: AsyncSession, run_id: uuid.UUID, attempt: int) -> None:
    """Enqueue that attempt of the run once the transaction has committed."""
    later(session, lambda d: d.enqueue(run_id, attempt))


async def dispatch_head(session: AsyncSession, agent_id: uuid.UUID) -> uuid.UUID | None:
    """After commit, enqueue the agent's oldest queued run (`head`)."""
    row = await sql.fetchrow(session, _HEAD, {"agent_id": agent_id})
    if row is None:
        return None
    enqueue_later(session, row["id"], row["attempt"])
    return row["id"]
