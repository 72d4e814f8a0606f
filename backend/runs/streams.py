"""Per-run event log: a Redis Stream `agentry:run:<run_id>:events`, replayable and resumable.

Events: `status` {status, ...}, `delta` {text}, `usage` {input_tokens, output_tokens,
total_tokens, cost_usd}, `tool_call`, `tool_result`, `requires_action` (API.md "Streaming"),
`end` {the final run}: only a final status ends a stream (a run waiting for an action does not). Ids are the stream's own (monotonic within
the run). Writers publish only what has committed. The stream is capped (MAXLEN ~) and
expires RUN_EVENTS_RETENTION_SECONDS after `end`; Redis is not the truth, so a reader that
finds no stream (expired, flushed) for a finished run gets a history synthesized from the
database, and a reader never waits on a stream forever: it re-checks the database while quiet.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.runs.models import FINISHED, Run, RunStatus
from backend.runs.schemas import RunRow, run_json

log = structlog.get_logger()

STATUS, DELTA, USAGE, END = "status", "delta", "usage", "end"
TOOL_CALL, TOOL_RESULT, REQUIRES_ACTION = "tool_call", "tool_result", "requires_action"
# An unfinished run's stream lives a day after its last event (a lost worker never ends it).
LIVE_TTL_SECONDS = 86_400
# While a stream is quiet, readers ask the database whether the run ended this often.
DB_CHECK_SECONDS = 2.0
_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def events_key(run_id: uuid.UUID | str) -> str:
    return f"agentry:run:{run_id}:events"


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: dict[str, Any]

    def sse(self) -> str:
        return f"id: {self.id}\nevent: {self.name}\ndata: {json.dumps(self.data)}\n\n"

    def message(self, run_id: uuid.UUID) -> dict[str, Any]:
        return {"event": self.name, "id": self.id, "data": self.data, "run_id": str(run_id)}


def usage_data(run: Run | RunRow) -> dict[str, Any]:
    tokens = run.input_tokens + run.output_tokens + run.cache_read_tokens + run.cache_write_tokens
    return {
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "total_tokens": tokens,
        "cost_usd": float(round(run.cost_usd, 6)),
    }


def final_events(run: Run | RunRow) -> list[tuple[str, dict[str, Any]]]:
    """What a run that just ended publishes: its usage, its last status, then `end`."""
    return [(USAGE, usage_data(run)), (STATUS, {"status": run.status}), (END, run_json(run))]


def _append(
    pipe: Any,
    settings: Settings,
    run_id: uuid.UUID,
    events: Iterable[tuple[str, dict[str, Any]]],
    ttl: int | None,
) -> None:
    key = events_key(run_id)
    for name, data in events:
        fields = {"event": name, "data": json.dumps(data, default=str)}
        pipe.xadd(key, fields, maxlen=settings.RUN_EVENTS_MAXLEN, approximate=True)
    if ttl is not None:
        pipe.expire(key, ttl)


class Publisher:
    """A process's writer of run events (one per Dispatcher): appends events to their runs'
    streams and (re)sets the streams' expiry, a day while the run lives,
    RUN_EVENTS_RETENTION_SECONDS once final. What is published while a round trip is in flight
    goes in the next one, one pipeline for many runs (each run's events stay in order: one
    pipeline at a time, commands in the order they were published). Never raises: a lost
    event is repaired by readers."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._pending: list[tuple[uuid.UUID, list[tuple[str, dict[str, Any]]], int | None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._sending: asyncio.Task[None] | None = None

    def add(
        self, run_id: uuid.UUID, events: list[tuple[str, dict[str, Any]]], ttl: int | None
    ) -> asyncio.Future[None]:
        """Queue `events` (and an expiry of `ttl` seconds); the future is done once sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((run_id, events, ttl))
        self._waiters.append(done)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._drain())
        return done

    async def publish(
        self, run_id: uuid.UUID, events: list[tuple[str, dict[str, Any]]], *, final: bool = False
    ) -> None:
        """`publish`, sharing round trips with the process's other publishers."""
        ttl = self.settings.RUN_EVENTS_RETENTION_SECONDS if final else LIVE_TTL_SECONDS
        await asyncio.shield(self.add(run_id, events, ttl))

    async def flush(self) -> None:
        """Wait until everything published so far is sent (a stopping worker)."""
        while self._sending is not None and not self._sending.done():
            await asyncio.shield(self._sending)

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # what is published in this loop turn goes together
        while self._pending:
            batch, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for run_id, events, ttl in batch:
                        _append(pipe, self.settings, run_id, events, ttl)
                    await pipe.execute()
            except (RedisError, OSError):
                log.warning("run_events_publish_failed", runs=len(batch), exc_info=True)
            finally:
                for done in waiters:
                    if not done.done():
                        done.set_result(None)


class RunEvents:
    """One attempt's events, published in order through the process's Publisher without
    waiting on Redis per event (a burst of deltas goes in one round trip, with other runs').
    The caller adds only what has committed (status changes after their commit)."""

    def __init__(self, publisher: Publisher, run_id: uuid.UUID) -> None:
        self.publisher, self.run_id = publisher, run_id
        self._last: asyncio.Future[None] | None = None

    def add(self, name: str, data: dict[str, Any]) -> None:
        # The first event (re)sets the live expiry: a stream that a lost `queued` event left
        # without one must still expire if this worker dies.
        ttl = LIVE_TTL_SECONDS if self._last is None else None
        self._last = self.publisher.add(self.run_id, [(name, data)], ttl)

    async def close(
        self,
        events: Iterable[tuple[str, dict[str, Any]]] = (),
        *,
        final: bool = False,
        wait: bool = True,
    ) -> None:
        """Publish `events` after what was added; `final` sets the retention expiry. With
        `wait`, return once all of it is sent (what another process does next must follow
        it); else the Publisher sends it in the background."""
        events = list(events)
        if events or final:
            ttl = self.publisher.settings.RUN_EVENTS_RETENTION_SECONDS if final else None
            self._last = self.publisher.add(self.run_id, events, ttl)
        if wait and self._last is not None:
            await asyncio.shield(self._last)


async def last_id(redis: Redis, run_id: uuid.UUID) -> str | None:
    """The id of the run's latest event; None when it has none (or Redis cannot tell)."""
    try:
        entries = await redis.xrevrange(events_key(run_id), count=1)
    except (RedisError, OSError):
        return None
    return _s(entries[0][0]) if entries else None


def parse_id(value: str | None) -> tuple[int, int] | None:
    if value is None or not _ID.match(value.strip()):
        return None
    ms, seq = value.strip().split("-")
    return int(ms), int(seq)


def _after(event_id: str, cursor: tuple[int, int]) -> bool:
    return (parse_id(event_id) or (0, 0)) > cursor


def _next_id(cursor: tuple[int, int]) -> str:
    return f"{cursor[0]}-{cursor[1] + 1}"


def synthesized(run: Run) -> list[Event]:
    """A finished run's history rebuilt from the database (ids 0-1, 0-2, ... before any real one)."""
    items: list[tuple[str, dict[str, Any]]] = [(STATUS, {"status": RunStatus.queued.value})]
    if run.started_at is not None:
        items.append((STATUS, {"status": RunStatus.running.value, "attempt": run.attempt}))
    if run.output:
        items.append((DELTA, {"text": run.output}))
    items.extend(final_events(run))
    return [Event(f"0-{n}", name, data) for n, (name, data) in enumerate(items, start=1)]


async def _read(redis: Redis, key: str, cursor: str, block_ms: int) -> list[Event] | None:
    """Entries after `cursor`, waiting up to `block_ms`; None when Redis cannot be read."""
    try:
        reply = await redis.xread({key: cursor}, count=500, block=block_ms)
    except (RedisError, OSError):
        log.warning("run_events_read_failed", key=key)
        await asyncio.sleep(block_ms / 1000)
        return None
    events: list[Event] = []
    for _stream, entries in reply or []:
        for raw_id, fields in entries:
            data = {_s(k): _s(v) for k, v in fields.items()}
            events.append(
                Event(_s(raw_id), data.get("event", ""), json.loads(data.get("data", "{}")))
            )
    return events


async def _exists(redis: Redis, key: str) -> bool:
    try:
        return bool(await redis.exists(key))
    except (RedisError, OSError):
        return False


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def load_run(
    sessionmaker: async_sessionmaker[AsyncSession], project_id: uuid.UUID, run_id: uuid.UUID
) -> Run | None:
    async with sessionmaker() as session:
        return await session.scalar(
            select(Run).where(Run.id == run_id, Run.project_id == project_id)
        )


async def follow(
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
    project_id: uuid.UUID,
    run_id: uuid.UUID,
    *,
    last_event_id: str | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[Event | None]:
    """The run's events after `last_event_id`, live, ending with `end`; None = keep-alive due."""
    key, cursor = events_key(run_id), parse_id(last_event_id) or (0, 0)
    delivered = cursor != (0, 0)
    if not await _exists(redis, key):
        # Expired or flushed: a finished run is answered from the database at once.
        run = await load_run(sessionmaker, project_id, run_id)
        if run is None or _finished(run):
            for event in _missing_history(run, cursor, delivered) if run else []:
                yield event
            return
    block_ms = max(10, int(min(1.0, keepalive) * 1000))
    quiet_since = checked_at = time.monotonic()
    ended_in_db = False
    while True:
        events = await _read(redis, key, f"{cursor[0]}-{cursor[1]}", block_ms)
        if events is None:  # Redis unreachable: ask the database at once
            events, checked_at = [], 0.0
        for event in events:
            cursor, delivered, quiet_since = parse_id(event.id) or cursor, True, time.monotonic()
            yield event
            if event.name == END:
                return
        now = time.monotonic()
        if events:
            continue
        if now - quiet_since >= keepalive:
            quiet_since = now
            yield None
        if now - checked_at < DB_CHECK_SECONDS and not ended_in_db:
            continue
        checked_at = now
        run = await load_run(sessionmaker, project_id, run_id)
        if run is None:
            return
        if ended_in_db:  # still no `end` one read after the database said so: synthesize
            for event in _missing_history(run, cursor, delivered):
                yield event
            return
        ended_in_db = _finished(run)  # the writer publishes `end` right after its commit


def _finished(run: Run) -> bool:
    return RunStatus(run.status) in FINISHED


def _missing_history(run: Run, cursor: tuple[int, int], delivered: bool) -> list[Event]:
    """Finished, but its stream has no `end`: the synthesized history, or just its end."""
    if not delivered:
        return synthesized(run)
    history = [e for e in synthesized(run) if _after(e.id, cursor)]
    if history:
        return history
    return [Event(_next_id(cursor), END, run_json(run))]


_STREAM_MATCH = "agentry:run:*:events"
_SCAN_BATCH = 500


async def purge_run_streams(
    session: AsyncSession, redis: Redis, *, before: datetime, orphan_idle: timedelta
) -> int:
    """DEL the event streams of runs finished before ``before``; SCAN, so no key list is kept."""
    idle_limit = int(orphan_idle.total_seconds())
    removed = 0
    batch: list[tuple[str, uuid.UUID]] = []
    async for raw in redis.scan_iter(match=_STREAM_MATCH, count=_SCAN_BATCH):
        key = raw.decode() if isinstance(raw, bytes) else raw
        try:
            batch.append((key, uuid.UUID(key.split(":")[2])))
        except ValueError:
            continue  # not ours
        if len(batch) >= _SCAN_BATCH:
            removed += await _purge_batch(session, redis, batch, before, idle_limit)
            batch = []
    if batch:
        removed += await _purge_batch(session, redis, batch, before, idle_limit)
    return removed


async def _purge_batch(
    session: AsyncSession,
    redis: Redis,
    batch: list[tuple[str, uuid.UUID]],
    before: datetime,
    idle_limit: int,
) -> int:
    rows = await session.execute(
        select(Run.id, Run.status, Run.finished_at).where(Run.id.in_([r for _, r in batch]))
    )
    runs = {run_id: (status, finished_at) for run_id, status, finished_at in rows}
    await session.rollback()  # read-only: no transaction held across Redis calls
    doomed = []
    for key, run_id in batch:
        if run_id in runs:
            status, finished_at = runs[run_id]
            if status in FINISHED and finished_at is not None and finished_at < before:
                doomed.append(key)
        elif (await redis.object("idletime", key) or 0) >= idle_limit:
            # No such run (its project was purged, or the key is a leftover): idle long enough.
            doomed.append(key)
    return int(await redis.delete(*doomed)) if doomed else 0
