"""The worker's hot path in SQL: claiming runs and concluding attempts, batched, on plain asyncpg
connections (no ORM: at hundreds of runs per second the ORM's per-statement cost was most of a
run's CPU, and a database round trip per step was most of the rest).

Claims (and conclusions of each kind) that are requested while earlier ones are in flight go
together: one transaction of three round trips for the batch. The transaction first locks the
batch's agent rows, in id order (`FOR UPDATE`: it waits for those agents' other claims,
conclusions, cancels, pauses and for in-flight submits, whose key-share locks conflict), then
runs one fused statement. In READ COMMITTED a statement reads a snapshot taken when it
starts, so the fused statement sees every earlier transaction of these agents: its guards
("the agent's oldest queued run", "no other run of the agent is running") and its dispatch
of an agent's next run read the agents' runs as they are. Every multi-row locker takes agents
before runs, each in id order: batches cannot deadlock each other.

The fused statements are assembled from the state machines' own fragments
(backend/agents/state.py and backend/runs/state.py, the only writers of the statuses) and the
usage domain's accounting fragments (backend/usage/service.py), once at import. For each run
they do exactly what the session-based steps do:

- claim: run queued→running (at the job's attempt, the agent's oldest queued run, none of its
  runs running), agent idle/waiting→working + history row; returns the run, its agent type
  and the agent's conversation history, and the project's budget state (usage.budget_sql).
- conclude (success, failure, timeout, retry, release, account-only): the attempt's provider
  calls (each counted once: provider_calls' unique key), the run's usage sums and the hourly
  rollups (a run counted as finished only by the statement that moved it to a final status),
  the run's status guarded by "still running, by this worker, at this attempt", the
  conversation (success), the agent's counters and status (back to idle unless paused,
  terminated or running another run; waiting on a retry) + history row; returns the run as
  committed, whether its agent was freed, and the agent's next queued run to dispatch.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agents import state as agent_state
from backend.agents.models import AgentStatus
from backend.config import Settings
from backend.core.batching import Batcher
from backend.core.errors import is_connection_error
from backend.core.sql import Statement
from backend.runs import dispatch, steps
from backend.runs import state as run_state
from backend.runs.models import RunStatus
from backend.usage import service as usage
from backend.webhooks import outbox

log = structlog.get_logger()
A, R = AgentStatus, RunStatus
T = TypeVar("T")
U = TypeVar("U")

# One worker process keeps about one connection busy at full speed (it is CPU-bound, and
# batches its statements: a couple of batches in flight at once), so a handful of connections
# absorb any burst without holding more of the server's.
MAX_POOL_SIZE = 5
MAX_BATCH = 100
MAX_IN_FLIGHT = 2  # batches of one kind at once (a second one keeps the other core busy)
# Backoff of a claim or conclusion while Postgres is unreachable.
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.2, 5.0
PING_TIMEOUT_SECONDS = 2.0


# --- connections ---------------------------------------------------------------------------


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await _warm(conn)


async def _warm(conn: asyncpg.Connection) -> None:
    """Run the claim and the success conclusion once for no run (they write nothing): the
    server backend loads its caches and plans them, and asyncpg keeps the prepared statements,
    before a burst of runs needs them (~20 ms a connection)."""
    now = datetime.now(UTC)
    params: dict[str, Any] = {"run_ids": [], "attempts": [], "jobs": [], "calls": [], "steps": []}
    params["worker_id"] = ""
    params |= {"history": 0, "now": now, "bucket": now, "reason": ""}
    for stmt in (CLAIM, CONCLUDE[Conclusion.succeeded]):
        await conn.fetch(stmt.sql, *stmt.args(params))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release: asyncpg has already rolled back an open transaction; our sessions set
    nothing else, so skip the default RESET ALL / UNLISTEN round trip."""


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """min(DB_POOL_SIZE, MAX_POOL_SIZE) connections, opened and warmed at startup."""
    url = make_url(settings.DATABASE_URL or "").set(drivername="postgresql")
    size = min(settings.DB_POOL_SIZE, MAX_POOL_SIZE)
    return await asyncpg.create_pool(
        url.render_as_string(hide_password=False),
        min_size=size,
        max_size=size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={
            "timezone": "UTC",
            "application_name": "agentry-worker",
            # The statements find rows by key: the generic plan is the right one, and
            # planning these CTEs per execution would cost more than running them.
            "plan_cache_mode": "force_generic_plan",
        },
    )


def _ids(ids: Any) -> str:
    """UUIDs as SQL literals (a UUID's text is safe to inline)."""
    return ", ".join(f"'{uuid.UUID(str(i))}'" for i in ids)


async def _transaction(conn: asyncpg.Connection, lock: str, stmt: Statement, params: Any) -> Any:
    """BEGIN + `lock` in one round trip (a simple-protocol query of two statements, hence the
    literal ids), the statement, COMMIT: three round trips."""
    await conn.execute(f"BEGIN; {lock}")
    try:
        rows = await conn.fetch(stmt.sql, *stmt.args(params))
    except BaseException:
        if not conn.is_closed():
            await asyncio.shield(conn.execute("ROLLBACK"))
        raise
    await conn.execute("COMMIT")
    return rows


# --- claim ---------------------------------------------------------------------------------

_CLAIM_JOBS = """
job AS (SELECT * FROM unnest(:run_ids::uuid[], :attempts::int[]) AS j(run_id, j_attempt))"""
# The runs each job may start: queued at the job's attempt, its agent's oldest queued run, and
# none of the agent's runs running or waiting for an action (it keeps the agent's turn).
_CLAIMABLE = """
claimable AS (
    SELECT ro.id, ro.agent_id FROM run_old ro
    WHERE ro.status = 'queued' AND ro.attempt = ro.j_attempt
        AND ro.seq = (SELECT min(q.seq) FROM runs q
            WHERE q.agent_id = ro.agent_id AND q.status = 'queued')
        AND NOT EXISTS (SELECT FROM runs b
            WHERE b.agent_id = ro.agent_id AND b.status IN ('running', 'requires_action'))
)"""


def _claim_sql() -> str:
    run_old, run_new = run_state.transition_ctes(
        R.running,
        only_from={R.queued},
        guard="EXISTS (SELECT FROM claimable c WHERE c.id = o.id)"
        " AND EXISTS (SELECT FROM agent_moved m WHERE m.id = o.agent_id AND m.moved)",
        values={
            "attempt": "r.attempt + 1",
            "started_at": "coalesce(r.started_at, now())",
            "worker_id": ":worker_id::text",
            "heartbeat_at": "now()",
        },
        now=":now::timestamptz",
    )
    agents = agent_state.transition_ctes(
        A.working,
        agents="SELECT agent_id FROM claimable",
        only_from={A.idle, A.waiting},
        when="EXISTS (SELECT FROM claimable c WHERE c.agent_id = o.id)",
        run_id="(SELECT c.id FROM claimable c WHERE c.agent_id = m.id LIMIT 1)",
        reason="'run started'",
        now=":now::timestamptz",
    )
    return f"""WITH {_CLAIM_JOBS},{run_old},{_CLAIMABLE},{agents},{run_new}
SELECT rn.id, rn.project_id, rn.agent_id, rn.attempt, rn.retries, rn.input, rn.timeout_seconds,
    t.provider, t.model, t.system_prompt, t.temperature, t.max_tokens, t.config,
    t.fallback_models, t.timeout_seconds AS type_timeout_seconds, t.max_retries, t.pricing,
    t.tools, t.mcp_servers, t.max_steps, t.tool_timeout_seconds, t.action_timeout_seconds,
    h.roles, h.contents, h.tool_calls, h.tool_call_ids, h.is_errors, st.steps,
    b.cost_limit, b.token_limit, b.month_cost, b.month_tokens, b.cost_spent, b.tokens_spent
FROM run_new rn
JOIN agent_moved am ON am.id = rn.agent_id
JOIN agent_types t ON t.id = am.agent_type_id
LEFT JOIN LATERAL (
    SELECT array_agg(m.role ORDER BY m.seq) AS roles,
        array_agg(m.content ORDER BY m.seq) AS contents,
        array_agg(m.tool_calls ORDER BY m.seq) AS tool_calls,
        array_agg(m.tool_call_id ORDER BY m.seq) AS tool_call_ids,
        array_agg(m.is_error ORDER BY m.seq) AS is_errors
    FROM (
        SELECT c.role, c.content, c.tool_calls, c.tool_call_id, c.is_error, c.seq
        FROM conversation_messages c
        WHERE c.agent_id = rn.agent_id ORDER BY c.seq DESC LIMIT :history::int
    ) m
) h ON true
LEFT JOIN LATERAL (
    -- a resumed run's committed steps, to continue after the last one
    SELECT jsonb_agg(to_jsonb(s) ORDER BY s.index) AS steps FROM run_steps s
    WHERE s.run_id = rn.id AND rn.steps > 0
) st ON true
LEFT JOIN LATERAL {usage.budget_sql("rn.project_id", ":now::timestamptz")} b ON true
WHERE rn.moved"""


CLAIM = Statement.of(_claim_sql())


# --- conclude ------------------------------------------------------------------------------


class Conclusion(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    retry = "retry"  # back to queued with the error; the next attempt is deferred
    release = "release"  # back to queued as it was (the worker is stopping)
    account = "account"  # no longer this attempt's run: only its calls are counted
    cancelled = "cancelled"  # any unfinished run, whoever runs it (cancel, terminate, delete)
    step = "step"  # a step ended: its row and calls committed, the run still running
    requires_action = "requires_action"  # parked until answered; no worker holds it
    expired = "expired"  # a required action not answered in time (the reaper): failed


C = Conclusion
_FINAL = {
    C.succeeded: R.succeeded,
    C.failed: R.failed,
    C.timed_out: R.timed_out,
    C.cancelled: R.cancelled,
    C.expired: R.failed,
}
_TARGET = {
    **_FINAL,
    C.retry: R.queued,
    C.release: R.queued,
    C.account: R.queued,
    C.step: R.running,  # no run moves to where it is: a step only writes what it adds
    C.requires_action: R.requires_action,
}
_SOURCES = {
    C.cancelled: {R.queued, R.running, R.requires_action},
    C.expired: {R.requires_action},
}
# j_heartbeat: the reaper's "no heartbeat since it looked" (NULL for a worker's own run).
_CONCLUDE_JOBS = """
job AS (
    SELECT * FROM jsonb_to_recordset(:jobs::jsonb) AS j(run_id uuid, j_worker text,
        j_attempt int, j_provider text, j_output text, j_model text, j_error jsonb,
        j_heartbeat timestamptz, j_action jsonb, j_messages jsonb)
)"""
# Still this attempt's: running, by this worker, at this attempt (and, for the reaper, not
# heartbeating since it looked).
_OURS = """o.worker_id = o.j_worker AND o.attempt = o.j_attempt
        AND (o.j_heartbeat IS NULL OR o.heartbeat_at = o.j_heartbeat)"""
# The reaper's expiry: the action's deadline has passed (as the reaper saw it).
_EXPIRED = """EXISTS (SELECT FROM runs x
        WHERE x.id = o.id AND x.action_expires_at <= :now::timestamptz)"""
_GUARDS = {
    C.account: "false",
    C.cancelled: "true",
    C.step: "false",
    C.expired: _EXPIRED,
}
# Whose steps a conclusion writes: the attempt's own while it runs; for a run that ended
# elsewhere (account), the failed step whose calls it counts, unless it resumed meanwhile.
_FINAL_STATUSES = ", ".join(f"'{s.value}'" for s in sorted(set(_FINAL.values())))
_ENDED_ELSEWHERE = f"o.status IN ({_FINAL_STATUSES})"
_STEPS_WHEN = {
    C.account: _ENDED_ELSEWHERE,
    C.step: f"(o.status = 'running' AND {_OURS}) OR {_ENDED_ELSEWHERE}",
    C.cancelled: "false",
    C.expired: "false",
}
_FINISHED = """
finished AS (
    SELECT id, project_id, agent_id, provider, model, status FROM run_new WHERE moved
)"""
# A run's messages (its input, its tool calls and their results, its answer: the job's
# j_messages) join its agent's history, in this order (seq).
_CONVERSATION = """
conversation AS (
    INSERT INTO conversation_messages (id, agent_id, run_id, role, content, tool_calls,
        tool_call_id, is_error, created_at)
    SELECT gen_random_uuid(), rn.agent_id, rn.id, m.role, m.content, m.tool_calls,
        m.tool_call_id, coalesce(m.is_error, false), :now::timestamptz
    FROM run_new rn JOIN run_old o ON o.id = rn.id
    CROSS JOIN LATERAL ROWS FROM (jsonb_to_recordset(o.j_messages) AS (role text, content text,
        tool_calls jsonb, tool_call_id text, is_error boolean)) WITH ORDINALITY
        AS m(role, content, tool_calls, tool_call_id, is_error, n)
    WHERE rn.moved
    ORDER BY rn.id, m.n
)"""
# A run parked for an action: run.requires_action {run, required_action} for webhooks.
_REQUIRES_ACTION_EVENTS = outbox.ctes(
    "run_ra",
    outbox.EventType.run_requires_action,
    """
SELECT rn.project_id, rn.id AS ordering_key, json_build_object(
        'run', to_json(rn), 'required_action', rn.required_action
    ) AS payload, :now::timestamptz AS created_at
FROM run_new rn WHERE rn.moved""",
)
_MOVED_RUN_OF = "EXISTS (SELECT FROM run_new rn WHERE rn.agent_id = o.id AND rn.moved)"
# No run of the agent is running (or waiting for an action) but the ones this statement ended.
_NO_OTHER_RUNNING = """NOT EXISTS (SELECT FROM runs b
            WHERE b.agent_id = o.id AND b.status IN ('running', 'requires_action')
            AND NOT EXISTS (SELECT FROM run_new rn WHERE rn.id = b.id AND rn.moved))"""
# An agent just freed: its oldest queued run is the next job to enqueue.
_HEAD = f"LEFT JOIN LATERAL ({dispatch.head('rn.agent_id')}) h ON coalesce(am.moved, false)"
_NO_HEAD = "LEFT JOIN LATERAL (SELECT NULL::uuid AS id, NULL::int AS attempt) h ON true"


def _run_values(kind: Conclusion) -> dict[str, str]:
    """The columns a conclusion writes with the status (the usage sums are always added)."""
    values: dict[str, str] = {}
    if kind is C.succeeded:
        values = {"output": "o.j_output", "error": "NULL", "model": "o.j_model"}
    elif kind in (C.failed, C.timed_out, C.retry):
        values = {"error": "o.j_error"}
    elif kind in (C.cancelled, C.expired):
        values = {"error": "coalesce(o.j_error, r.error)"}
        if kind is C.cancelled:
            values["cancel_requested_at"] = ":now"
    elif kind is C.requires_action:
        values = {
            "required_action": "o.j_action",
            "action_expires_at": "(o.j_action ->> 'expires_at')::timestamptz",
        }
    if kind is C.retry:
        values["retries"] = "r.retries + 1"
    if kind in _FINAL:
        values |= {"finished_at": ":now::timestamptz"}
        values |= {"required_action": "NULL", "action_expires_at": "NULL"}
    elif kind in (C.retry, C.release, C.requires_action):
        values |= {"worker_id": "NULL", "heartbeat_at": "NULL"}
    return values


def _agent_ctes(kind: Conclusion) -> str:
    """A final status frees the agent (unless paused, terminated, or running another run); a
    requeue makes it wait. Its usage counters grow either way."""
    final = kind in _FINAL
    counters, touched = usage.agent_usage("finished" if final else None)
    common: dict[str, Any] = {
        "agents": "SELECT agent_id FROM run_old",
        "counters": counters,
        "touch_when": touched,
        "run_id": "(SELECT rn.id FROM run_new rn WHERE rn.agent_id = m.id AND rn.moved"
        " ORDER BY rn.id LIMIT 1)",
        "now": ":now::timestamptz",
    }
    if final:
        return agent_state.transition_ctes(
            A.idle,
            only_from={A.working, A.waiting},
            when=f"{_MOVED_RUN_OF} AND {_NO_OTHER_RUNNING}",
            reason=":reason::text",
            # the statement's snapshot still counts the runs it ended
            pending_runs=f"({agent_state.PENDING_RUNS} - (SELECT count(*) FROM run_new rn"
            " WHERE rn.agent_id = m.id AND rn.moved))",
            **common,
        )
    when = "false" if kind in (C.account, C.step) else _MOVED_RUN_OF
    reason = "'run requires action'" if kind is C.requires_action else "'run retrying'"
    return agent_state.transition_ctes(
        A.waiting, only_from={A.working}, when=when, reason=reason, **common
    )


def _conclude_sql(kind: Conclusion) -> str:
    final = kind in _FINAL
    run_old, run_new = run_state.transition_ctes(
        _TARGET[kind],
        only_from=_SOURCES.get(kind, {R.running}),
        guard=_GUARDS.get(kind, _OURS),
        values=_run_values(kind),
        counters=f"{usage.RUN_USAGE_SET},\n        {steps.STEPS_SET}",
        joins=f"LEFT JOIN calls_sum s ON s.run_id = o.id {steps.STEPS_JOIN}",
        touch_when=f"coalesce(s.n, 0) > 0 OR {steps.STEPS_WRITTEN}",
        now=":now::timestamptz",
    )
    steps_in = steps.insert_ctes(when=_STEPS_WHEN.get(kind, f"o.status = 'running' AND {_OURS}"))
    ctes = [_CONCLUDE_JOBS, run_old, usage.CALLS_CTES, steps_in, run_new]
    ctes += [*([_FINISHED] if final else []), usage.rollup_cte("finished" if final else None)]
    ctes += [usage.BUDGET_EVENT_CTES, _agent_ctes(kind)]
    if kind is C.succeeded:
        ctes.append(_CONVERSATION)
    if kind is C.requires_action:
        ctes.append(_REQUIRES_ACTION_EVENTS)
    # After a step, the budget as the next model step must see it (this step's calls included).
    budget = usage.budget_sql("rn.project_id", ":now::timestamptz", with_calls=True)
    columns = ", b.cost_spent, b.tokens_spent, b.month_cost, b.month_tokens, b.cost_limit"
    # still ours: the step was written and the run is running (a run that ended meanwhile
    # keeps the step, as its calls are counted, but this attempt stops)
    columns += ", b.token_limit, rn.status = 'running'"
    columns += " AND EXISTS (SELECT FROM steps_in si WHERE si.run_id = rn.id) AS stepped"
    return f"""WITH {",".join(ctes)}
SELECT rn.*, coalesce(am.moved, false) AS released, h.id AS next_id, h.attempt AS next_attempt
    {columns if kind is C.step else ""}
FROM run_new rn
LEFT JOIN agent_moved am ON am.id = rn.agent_id
{_HEAD if final else _NO_HEAD}
{f"LEFT JOIN LATERAL {budget} b ON true" if kind is C.step else ""}"""


CONCLUDE = {kind: Statement.of(_conclude_sql(kind)) for kind in Conclusion}


# --- the same conclusions, through a session -----------------------------------------------

# SQLAlchemy's text() takes `:name` before `::type` for a cast, not a parameter.
_SESSION_CONCLUDE = {
    kind: text(re.sub(r"(?<![:\w]):([a-z_]+)::([a-z]+)", r"CAST(:\1 AS \2)", stmt_sql))
    for kind, stmt_sql in ((kind, _conclude_sql(kind)) for kind in Conclusion)
}


async def conclude_in(
    session: AsyncSession,
    kind: Conclusion,
    jobs: list[dict[str, Any]],
    *,
    calls: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[Any]:
    """`kind` for the runs of `jobs` (run_id, agent_id, and the job columns of the kind), in
    the caller's transaction: the API's cancels and the reaper run the worker's statement.
    `calls`: usage.priced_calls to account with it; `steps`: steps.row rows. The rows written (from_status, moved,
    released, next_id, next_attempt, ...)."""
    if not jobs:
        return []
    agents = _ids(sorted({str(job["agent_id"]) for job in jobs}))
    await session.execute(text(f"SELECT FROM agents WHERE id IN ({agents}) ORDER BY id FOR UPDATE"))
    now = now or datetime.now(UTC)
    params = {
        "jobs": json.dumps([_job_columns(job) for job in jobs]),
        "calls": json.dumps(calls or []),
        "steps": json.dumps(steps or []),
        "now": now,
        "bucket": usage.hour_bucket(now),
        "reason": f"run {kind}",
    }
    return list((await session.execute(_SESSION_CONCLUDE[kind], params)).all())


def _job_columns(job: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, uuid.UUID | datetime) else v for k, v in job.items()}


# --- the worker's interface ----------------------------------------------------------------


class Pipeline:
    """A worker's claims and conclusions (backend/runs/executor.py, outcomes.py)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, worker_id: str) -> None:
        self.pool, self.settings, self.worker_id = pool, settings, worker_id
        self.available = True  # the last claim or conclusion reached the database
        self._claims: Batcher[tuple[uuid.UUID, int], Any] = Batcher(
            self._claim_batch, key=lambda job: job[0]
        )
        self._conclusions = {
            kind: Batcher(partial(self._conclude_batch, kind), key=lambda job: job[0]["run_id"])
            for kind in Conclusion
        }

    @classmethod
    async def connect(cls, settings: Settings, worker_id: str) -> Pipeline:
        return cls(await create_pool(settings), settings, worker_id)

    async def close(self) -> None:
        await self.pool.close()

    async def claim(self, run_id: uuid.UUID, attempt: int) -> Any:
        """Start attempt `attempt + 1` of the run; the claimed row, or None (not its turn,
        agent busy or paused, run cancelled, or a stale job). Waits while Postgres is down."""
        return await self._durably("claim", run_id, lambda: self._claims((run_id, attempt)))

    async def conclude(
        self,
        kind: Conclusion,
        job: dict[str, Any],
        calls: list[dict[str, Any]],
        steps: list[dict[str, Any]] | None = None,
    ) -> Any:
        """`job`: run_id, j_worker, j_attempt, j_provider (+ j_output, j_model, j_error,
        j_action, j_messages); `calls`: usage.priced_calls; `steps`: steps.row rows. The run after it (with `moved`, `released`, `next_id`,
        `next_attempt`), or None when nothing was written (no such run, or not ours and no
        calls). While Postgres is down the attempt's result and usage wait here, in memory,
        and are committed once it is back (the heartbeat keeps the run meanwhile)."""
        run_id = job["run_id"]
        return await self._durably(
            "conclude", run_id, lambda: self._conclusions[kind]((job, calls, steps or []))
        )

    async def ping(self) -> None:
        """One round trip on the pool (the heartbeat's check while no run is held)."""
        async with self.pool.acquire(timeout=PING_TIMEOUT_SECONDS) as conn:
            await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_SECONDS)

    async def _durably(self, step: str, run_id: Any, op: Callable[[], Awaitable[T]]) -> T:
        """`op` again and again, with backoff, while the database is unreachable; `available`
        tells the worker's health. Any other error is raised at once."""
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.available = False
                log.warning(
                    "database_unavailable",
                    step=step,
                    run_id=str(run_id),
                    error_type=type(exc).__name__,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            self.available = True
            return result

    async def _claim_batch(self, jobs: list[tuple[uuid.UUID, int]]) -> list[Any]:
        ids = _ids(run_id for run_id, _ in jobs)
        lock = f"SELECT FROM agents WHERE id IN (SELECT agent_id FROM runs WHERE id IN ({ids}))"
        params = {
            "run_ids": [run_id for run_id, _ in jobs],
            "attempts": [attempt for _, attempt in jobs],
            "worker_id": self.worker_id,
            "history": self.settings.RUN_HISTORY_MAX_MESSAGES,
            "now": datetime.now(UTC),
        }
        async with self.pool.acquire() as conn:
            rows = await _transaction(conn, f"{lock} ORDER BY id FOR UPDATE", CLAIM, params)
        claimed = {(row["id"], row["attempt"] - 1): row for row in rows}
        return [claimed.get(job) for job in jobs]

    async def _conclude_batch(
        self, kind: Conclusion, requests: list[tuple[dict[str, Any], list[Any], list[Any]]]
    ) -> list[Any]:
        jobs = [job for job, _, _ in requests]
        agents = _ids(sorted({job["agent_id"] for job in jobs}))
        now = datetime.now(UTC)
        params = {
            "jobs": [{k: v for k, v in job.items() if k != "agent_id"} for job in jobs],
            "calls": [call for _, calls, _ in requests for call in calls],
            "steps": [step for _, _, steps in requests for step in steps],
            "now": now,
            "bucket": usage.hour_bucket(now),
            "reason": f"run {kind}",
        }
        lock = f"SELECT FROM agents WHERE id IN ({agents}) ORDER BY id FOR UPDATE"
        async with self.pool.acquire() as conn:
            rows = await _transaction(conn, lock, CONCLUDE[kind], params)
        concluded = {str(row["id"]): row for row in rows}
        return [concluded.get(str(job["run_id"])) for job in jobs]
