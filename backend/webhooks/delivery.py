"""Delivery of the outbox's events: by every worker process (unless WEBHOOK_DELIVERY_ENABLED
is false), or by processes of their own (`agentry webhooks`), in tasks of their own.

At each poll (WEBHOOK_POLL_SECONDS) the loop fans new events out (`_FANOUT`): the deliveries
of each event, one per enabled endpoint subscribed to its type, written in one transaction
that marks the events fanned out. One process fans out at a time (a transaction-level advisory lock), in event
order: an (endpoint, ordering key)'s deliveries are written in the order of its events, and
only the oldest pending one -- the key's head -- is due; the others wait (next_attempt_at
NULL) until the head succeeds or fails, when the statement writing that result makes the next
one due (`_FINISH`, under the same lock, so a fan-out and a promotion never miss each other).

Due heads are taken with `FOR UPDATE SKIP LOCKED` and leased (`next_attempt_at` = now + lease,
`attempts` + 1) before their POST: several processes share the work without sending one
delivery twice at once, and a process that dies mid-attempt leaves the delivery to be taken
again when the lease ends (at least once). Attempts run in their own tasks, at most
WEBHOOK_MAX_IN_FLIGHT per process and WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT per endpoint, on their
own HTTP connections (kept alive, a pool per endpoint): a slow or dead endpoint holds only its
own share and never runs' execution. Every statement reads what is due, never the whole
backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from sqlalchemy import text

from backend.config import Settings
from backend.core.db import create_engine
from backend.core.errors import is_connection_error
from backend.webhooks import http, outbox, signing, urls

log = structlog.get_logger()

DELIVERIES = PromCounter(
    "agentry_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (succeeded, retry, failed, disabled)",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "agentry_webhook_attempt_seconds",
    "Duration of a webhook delivery attempt, by outcome",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_TO_DELIVERY_SECONDS = Histogram(
    "agentry_webhook_event_to_delivery_seconds",
    "From an event's commit time to its successful delivery",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300, 3600, 36000),
)
MAX_ERROR_CHARS = 500

# pg_advisory_xact_lock key (any constant): fan-outs and promotions, one at a time.
FANOUT_LOCK = 0x77656268

# Up to :batch events not yet fanned out, in order: their deliveries, each due at once when it
# is its key's head (no pending delivery of the key before it), else waiting. (`(SELECT …
# LIMIT 1) IS NULL` rather than NOT EXISTS: a probe of the key's index entries per row, never
# an anti-join over every pending row.)
_FANOUT = text(
    """
WITH ev AS (
    SELECT e.id, e.seq, e.project_id, e.type, e.ordering_key, e.created_at
    FROM webhook_events e WHERE NOT e.fanned_out ORDER BY e.seq LIMIT :batch
),
marked AS (
    UPDATE webhook_events e SET fanned_out = true WHERE e.id = ANY(ARRAY(SELECT id FROM ev))
),
targets AS (
    SELECT ev.id, ev.seq, ev.ordering_key, ev.created_at, w.id AS endpoint_id,
        row_number() OVER (PARTITION BY w.id, ev.ordering_key ORDER BY ev.seq) AS n
    FROM ev JOIN webhook_endpoints w ON w.project_id = ev.project_id AND w.enabled
        AND (w.events ? ev.type OR w.events ? '*')
),
written AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering_key, seq, status,
        attempts, next_attempt_at, created_at)
    SELECT gen_random_uuid(), t.id, t.endpoint_id, t.ordering_key, t.seq, 'pending', 0,
        CASE WHEN t.ordering_key IS NULL OR (t.n = 1 AND (
            SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = t.endpoint_id
                AND d.ordering_key = t.ordering_key AND d.status = 'pending'
            ORDER BY d.seq LIMIT 1) IS NULL)
        THEN t.created_at END, t.created_at
    FROM targets t
    RETURNING 1
)
SELECT count(*) FROM ev
"""
)
# The due heads of each enabled endpoint, up to its free share (per_endpoint minus what this
# process has in flight), oldest first, locked as they are found: an index probe per endpoint,
# whatever the backlog. (Every statement here finds rows by key or by a bounded index range:
# the planner's estimates of a queue table are always stale, and a plan that scans all
# pending rows would make each statement cost as much as the backlog.)
_TAKE = text(
    """
WITH taken AS (
    SELECT d.id, d.n FROM webhook_endpoints w
    LEFT JOIN unnest(CAST(:flying AS uuid[]), CAST(:flying_n AS int[])) AS f(id, n)
        ON f.id = w.id
    CROSS JOIN LATERAL (
        SELECT d.id, row_number() OVER () AS n FROM (
            SELECT d.id FROM webhook_deliveries d
            WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at
            LIMIT greatest(:per_endpoint - coalesce(f.n, 0), 0)
            FOR UPDATE SKIP LOCKED
        ) d
    ) d
    WHERE w.enabled
    ORDER BY d.n LIMIT :limit
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
FROM taken t, webhook_events e, webhook_endpoints w
WHERE d.id = ANY(ARRAY(SELECT id FROM taken)) AND d.id = t.id AND e.id = d.event_id
    AND w.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.attempts, e.id AS event_id, e.type, e.payload, e.created_at,
    w.url, w.secret_encrypted, w.previous_secret_encrypted, w.previous_secret_expires_at,
    now() AS taken_at
"""
)
# The results of the attempts that ended together, in one statement; each guarded by its
# attempt (a lease that ran out and was taken again is no longer ours). A head that ended
# makes its key's next delivery due (unless another head of the key is pending: a redelivery).
_FINISH = text(
    """
WITH done AS (
    UPDATE webhook_deliveries d SET status = r.status, next_attempt_at = r.next_attempt_at,
        last_response_status = r.response_status, last_error = r.error,
        delivered_at = CASE WHEN r.status = 'succeeded' THEN now() ELSE d.delivered_at END
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id uuid, attempts int, status text,
        next_attempt_at timestamptz, response_status int, error text, disable boolean)
    WHERE d.id = ANY(CAST(:ids AS uuid[])) AND d.id = r.id AND d.attempts = r.attempts
    RETURNING d.id, d.endpoint_id, d.ordering_key, d.status, r.disable
),
freed AS (
    SELECT DISTINCT f.endpoint_id, f.ordering_key FROM done f
    WHERE f.status <> 'pending' AND f.ordering_key IS NOT NULL
),
promoted AS (
    UPDATE webhook_deliveries d SET next_attempt_at = now()
    FROM freed f
    WHERE d.id = (SELECT n.id FROM webhook_deliveries n
            WHERE n.endpoint_id = f.endpoint_id AND n.ordering_key = f.ordering_key
                AND n.status = 'pending' AND n.next_attempt_at IS NULL
            ORDER BY n.seq LIMIT 1)
        AND (SELECT 1 FROM webhook_deliveries h
            WHERE h.endpoint_id = f.endpoint_id AND h.ordering_key = f.ordering_key
                AND h.status = 'pending' AND h.next_attempt_at IS NOT NULL
                AND h.id <> ALL(CAST(:ids AS uuid[]))
            ORDER BY h.seq LIMIT 1) IS NULL
)
UPDATE webhook_endpoints SET enabled = false, updated_at = now()
WHERE id IN (SELECT endpoint_id FROM done WHERE disable)
"""
)
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
FANOUT_BATCH = 1000
POOL_SIZE = 3  # a fan-out, a take and a result write at once
MAX_BATCH = 500
TAKE_GAP_SECONDS = 0.01


class Deliverer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Connections of its own. Commits need not wait for the WAL to reach disk (most of a
        # small transaction's cost): a fan-out, lease or result lost with the last
        # milliseconds of a crash is redone (fan-outs are atomic; a lease runs out; an attempt
        # whose result is lost is made again: at least once).
        assert settings.DATABASE_URL
        self.engine = create_engine(
            settings.DATABASE_URL,
            pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE,
            server_settings={"synchronous_commit": "off", "application_name": "agentry-webhooks"},
        )
        self.delays = settings.webhook_retry_delays
        self.poll = settings.WEBHOOK_POLL_SECONDS
        # Kept-alive connections per endpoint, as many as its share.
        self.clients: dict[uuid.UUID, http.Client] = {}
        self.per_endpoint: Counter[uuid.UUID] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._results: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for task in [*self.tasks, *([self._writer] if self._writer else [])]:
            task.cancel()  # their leases run out; another worker (or this one again) retries
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        for client in self.clients.values():
            await client.aclose()
        await self.engine.dispose()

    async def _run(self) -> None:
        failures = 0
        fanned_at, fanned = float("-inf"), 0
        while True:
            try:
                # New events are looked for at each poll (and at once after a full batch), not
                # after every attempt that ends: those turns only take what became due.
                if fanned >= FANOUT_BATCH or time.monotonic() - fanned_at >= self.poll:
                    fanned_at, fanned = time.monotonic(), await self.fan_out()
                taken = await self.take()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop outlives database outages
                failures += 1
                log.warning(
                    "webhook_take_failed",
                    error_type=type(exc).__name__,
                    connection=is_connection_error(exc),
                )
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            if taken or fanned >= FANOUT_BATCH:
                continue  # more may be due
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), max(self.poll - (time.monotonic() - fanned_at), 0.001)
                )
            # Woken by an attempt that ended: the others ending meanwhile are taken together
            # (one statement for many attempts, not one each); with none left in flight, at
            # once (a key's next event waits for no one).
            if self.tasks:
                await asyncio.sleep(TAKE_GAP_SECONDS)

    async def fan_out(self) -> int:
        """Write the deliveries of up to FANOUT_BATCH new events (unless another process is
        fanning out); how many events."""
        async with self.engine.begin() as conn:
            if not await conn.scalar(_TRY_LOCK, {"key": FANOUT_LOCK}):
                return 0
            return int(await conn.scalar(_FANOUT, {"batch": FANOUT_BATCH}) or 0)

    async def take(self) -> int:
        """Lease what is due (within this worker's limits) and start its attempts."""
        room = self.settings.WEBHOOK_MAX_IN_FLIGHT - len(self.tasks)
        if room <= 0:
            return 0
        flying = list(self.per_endpoint.items())
        params = {
            "flying": [str(endpoint) for endpoint, _ in flying],
            "flying_n": [n for _, n in flying],
            "per_endpoint": self.settings.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT,
            "limit": room,
            "lease": self.settings.WEBHOOK_TIMEOUT_SECONDS * 2 + 1,
        }
        # One statement, its own transaction: one round trip.
        async with self.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = (await auto.execute(_TAKE, params)).mappings().all()
        for row in rows:
            self.per_endpoint[row["endpoint_id"]] += 1
            task = asyncio.create_task(self._attempt(dict(row)))
            self.tasks.add(task)
            task.add_done_callback(self._done(row["endpoint_id"]))
        return len(rows)

    def _done(self, endpoint_id: uuid.UUID) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            self.per_endpoint[endpoint_id] -= 1
            if self.per_endpoint[endpoint_id] <= 0:
                del self.per_endpoint[endpoint_id]
            self._wake.set()  # room again; the key's next event may be due

        return done

    async def _attempt(self, row: dict[str, Any]) -> None:
        started = time.monotonic()
        status, error = await self._post(row)
        outcome, values = self._outcome(row, status, error)
        ATTEMPT_SECONDS.labels(outcome).observe(time.monotonic() - started)
        DELIVERIES.labels(outcome).inc()
        result = {"id": str(row["id"]), "attempts": row["attempts"], "response_status": status}
        result |= {"error": error[:MAX_ERROR_CHARS] if error else None, **values}
        result["disable"] = outcome == "disabled"
        try:
            await self._record(result)
        except Exception as exc:  # noqa: BLE001 - the lease ends; the delivery is retried
            log.warning("webhook_result_lost", delivery_id=str(row["id"]), error=type(exc).__name__)
            return
        if outcome == "succeeded":
            EVENT_TO_DELIVERY_SECONDS.observe(
                max((row["taken_at"] - row["created_at"]).total_seconds(), 0.0)
                + (time.monotonic() - started)
            )

    async def _record(self, result: dict[str, Any]) -> None:
        """Write the attempt's result, with those that end meanwhile (one statement)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._results.append((result, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def _write(self) -> None:
        await asyncio.sleep(0)  # the results of this loop turn go together
        while self._results:
            batch, self._results = self._results[:MAX_BATCH], self._results[MAX_BATCH:]
            rows = sorted((r for r, _ in batch), key=lambda r: r["id"])  # lock order
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(_LOCK, {"key": FANOUT_LOCK})  # see _FINISH
                    params = {"rows": json.dumps(rows, default=str), "ids": [r["id"] for r in rows]}
                    await conn.execute(_FINISH, params)
            except Exception as exc:  # noqa: BLE001 - handed to the attempts
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for _, future in batch:
                future.set_result(None)

    def _outcome(
        self, row: dict[str, Any], status: int | None, error: str | None
    ) -> tuple[str, dict[str, Any]]:
        if status is not None and 200 <= status < 300:
            return "succeeded", {"status": "succeeded", "next_attempt_at": None}
        if status == 410:
            return "disabled", {"status": "failed", "next_attempt_at": None}
        retry = row["attempts"] - 1  # retries already made
        if retry >= len(self.delays):
            return "failed", {"status": "failed", "next_attempt_at": None}
        delay = self.delays[retry] * random.uniform(0.8, 1.2)  # jitter: retries spread out
        at = datetime.now(UTC) + timedelta(seconds=delay)
        return "retry", {"status": "pending", "next_attempt_at": at}

    async def _post(self, row: dict[str, Any]) -> tuple[int | None, str | None]:
        """(HTTP status, error): one attempt, never raising."""
        try:
            body, headers = self._request(row)
            status = await self._client(row["endpoint_id"]).post(row["url"], body, headers)
        except urls.UrlRefused as exc:
            return None, f"url {exc}"
        except TimeoutError:
            return None, f"timeout after {self.settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bad event must not stop the others
            log.exception("webhook_attempt_error", delivery_id=str(row["id"]))
            return None, f"internal error: {type(exc).__name__}"
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _client(self, endpoint_id: uuid.UUID) -> http.Client:
        client = self.clients.get(endpoint_id)
        if client is None:
            client = self.clients[endpoint_id] = http.Client(
                timeout=self.settings.WEBHOOK_TIMEOUT_SECONDS,
                keep=self.settings.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT,
                allow_private=self.settings.WEBHOOK_ALLOW_PRIVATE_URLS,
            )
        return client

    def _request(self, row: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        data = outbox.render(row["payload"])
        event = {"type": row["type"], "timestamp": _iso(row["created_at"]), "data": data}
        body = json.dumps(event, separators=(",", ":")).encode()
        msg_id, timestamp = str(row["event_id"]), int(time.time())
        return body, {
            "content-type": "application/json",
            "user-agent": "agentry-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.sign(self._secrets(row), msg_id, timestamp, body),
        }

    def _secrets(self, row: dict[str, Any]) -> list[str]:
        key = self.settings.secret_key
        found = [signing.decrypt(row["secret_encrypted"], key)]
        expires = row["previous_secret_expires_at"]
        if row["previous_secret_encrypted"] and expires and expires > row["taken_at"]:
            found.append(signing.decrypt(row["previous_secret_encrypted"], key))
        return found


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
