"""Usage accounting: every provider call priced and counted once, every run counted once.

Writers (called by the runs domain, in its own transactions; flush, never commit):
- ``record_call``: one finished provider call -> provider_calls row, the run's and the agent's
  usage columns, the hourly usage rollup. Atomic SQL increments only (no read-modify-write), so
  concurrent transactions never lose an update. Idempotent per (run, attempt, provider, model).
- ``record_run_finished``: once per run, in the transaction that makes it terminal -> rollup
  ``runs`` and status counters, the agent's ``tasks_completed`` when it succeeded.
- ``check_budget``: at submit, under a row lock on the project.

Lock order inside a run's transaction: run row, agent row, rollup rows (primary model before
fallbacks). Transactions of one agent serialize on the agent row, and rollup rows are keyed by
agent, so the upserts cannot deadlock each other.

Unknown prices: the call's cost is NULL (never 0), ``runs.cost_unknown`` is set, the rollup's
``unknown_cost_calls`` grows; known costs keep adding up, so a cost is then a lower bound.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from prometheus_client import Histogram
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from backend.agents.models import Agent
from backend.core.db import after_commit, utcnow
from backend.core.errors import BudgetExceeded
from backend.projects.models import Project
from backend.runs.models import FINISHED, ProviderCall, Run, RunStatus
from backend.runs.providers.base import Usage
from backend.usage.models import UsageRollup
from backend.usage.pricing import price_call, to_money

log = structlog.get_logger()

# Redis keys shared with the runs domain.
WORKER_KEY_PREFIX = "agentry:workers:"  # + worker id; written by each worker with a TTL
RUN_EVENTS_KEY = "agentry:run:{run_id}:events"  # a run's event stream

_COST_SCALE = Decimal("1e-10")  # the NUMERIC(20, 10) columns' scale
_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
_ROLLUP_KEY = ["project_id", "bucket", "agent_id", "provider", "model"]
_ROLLUP_TOKENS = "u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens"

RUN_DURATION = Histogram(
    "agentry_run_duration_seconds",
    "Run duration (started to finished), observed after the finishing transaction commits",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


def hour_bucket(at: datetime) -> datetime:
    """The UTC hour a moment falls in; naive datetimes are taken as UTC."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


async def record_call(
    session: AsyncSession,
    run: Run,
    *,
    attempt: int,
    provider: str,
    model: str,
    usage: Usage,
    succeeded: bool,
    error: dict | None = None,
    pricing_override: dict | None = None,
    at: datetime | None = None,
) -> ProviderCall:
    """Price one finished provider call and account it in the caller's transaction.

    A second call for the same (run, attempt, provider, model) records nothing and returns the
    first one's row: its tokens are counted once.
    """
    at = at or utcnow()
    price = price_call(provider, model, usage, override=pricing_override, at=at)
    cost = None if price.cost_usd is None else price.cost_usd.quantize(_COST_SCALE)
    tokens = {name: getattr(usage, name) for name in _TOKEN_COLUMNS}
    call = await session.scalar(
        insert(ProviderCall)
        .values(
            id=uuid.uuid4(),
            run_id=run.id,
            project_id=run.project_id,
            agent_id=run.agent_id,
            attempt=attempt,
            provider=provider,
            model=model,
            succeeded=succeeded,
            cost_usd=cost,
            price_source=price.source,
            raw_usage=usage.raw,
            error=error,
            created_at=at,
            **tokens,
        )
        .on_conflict_do_nothing(index_elements=["run_id", "attempt", "provider", "model"])
        .returning(ProviderCall)
    )
    if call is None:
        log.warning("provider_call_duplicate", run_id=str(run.id), attempt=attempt, model=model)
        return await session.scalar(
            select(ProviderCall).where(
                ProviderCall.run_id == run.id,
                ProviderCall.attempt == attempt,
                ProviderCall.provider == provider,
                ProviderCall.model == model,
            )
        )
    known = cost if cost is not None else Decimal(0)
    await _add_to_run(session, run, tokens, known, unknown=price.unknown)
    await _add_to_agent(session, run.agent_id, tokens_used=usage.total_tokens, cost_incurred=known)
    await _upsert_rollup(
        session,
        run,
        at,
        provider,
        model,
        calls=1,
        cost_usd=known,
        unknown_cost_calls=int(price.unknown),
        **tokens,
    )
    return call


async def record_run_finished(session: AsyncSession, run: Run) -> None:
    """Count a run that just became terminal, once; call it in the transaction that made it so.

    Call it only when your conditional status UPDATE moved the run from a live status to a
    terminal one: that happens once per run, so the run is counted once.
    """
    status = RunStatus(run.status)
    if status not in FINISHED:
        raise ValueError(f"run {run.id} is {status}, not finished")
    finished_at = run.finished_at or utcnow()
    counters = {"runs": 1, status.value: 1}
    await _upsert_rollup(session, run, finished_at, run.provider, run.model, **counters)
    if status is RunStatus.succeeded:
        await _add_to_agent(session, run.agent_id, tasks_completed=1)
    started_at = run.started_at

    async def observe() -> None:
        observe_finished(status.value, started_at, finished_at)

    after_commit(session, observe)  # a rolled-back finish is not observed


def observe_finished(status: str, started_at: datetime | None, finished_at: datetime) -> None:
    """RUN_DURATION of a run whose finishing transaction has committed."""
    if started_at is not None:
        seconds = max((finished_at - started_at).total_seconds(), 0.0)
        RUN_DURATION.labels(status).observe(seconds)


# The budget rule, once: a project's committed usage in the UTC calendar month of `now` against
# its limits. One SQL subquery (columns below) for every reader: submit (check_budget), the
# worker's claim (backend/runs/pipeline.py) and the metrics. `project` and `now` are SQL
# expressions. Projects without a budget give no row, so the month's sum is never computed
# for them.
def budget_sql(project: str, now: str) -> str:
    month = f"date_trunc('month', {now} AT TIME ZONE 'UTC')"
    return f"""(
    SELECT p.monthly_cost_limit_usd AS cost_limit, p.monthly_token_limit AS token_limit,
        s.cost AS month_cost, s.tokens AS month_tokens,
        coalesce(s.cost >= p.monthly_cost_limit_usd, false) AS cost_spent,
        coalesce(s.tokens >= p.monthly_token_limit, false) AS tokens_spent
    FROM projects p CROSS JOIN LATERAL (
        SELECT coalesce(sum(u.cost_usd), 0) AS cost,
            coalesce(sum({_ROLLUP_TOKENS}), 0)::bigint AS tokens
        FROM usage_rollups u
        WHERE u.project_id = p.id AND u.bucket >= {month} AT TIME ZONE 'UTC'
            AND u.bucket < ({month} + interval '1 month') AT TIME ZONE 'UTC'
    ) s
    WHERE p.id = {project}
        AND (p.monthly_cost_limit_usd IS NOT NULL OR p.monthly_token_limit IS NOT NULL)
)"""


@dataclass(frozen=True)
class BudgetState:
    cost_limit: Decimal | None
    token_limit: int | None
    month_cost: Decimal
    month_tokens: int
    cost_spent: bool
    tokens_spent: bool

    @property
    def exhausted(self) -> bool:
        return self.cost_spent or self.tokens_spent


_BUDGET = text(f"SELECT * FROM {budget_sql(':project_id', 'CAST(:now AS timestamptz)')} b")


async def budget_state(
    session: AsyncSession, project_id: uuid.UUID, *, now: datetime | None = None
) -> BudgetState | None:
    """The project's budget and this month's committed spend; None without a budget."""
    params = {"project_id": project_id, "now": now or utcnow()}
    row = (await session.execute(_BUDGET, params)).first()
    return None if row is None else BudgetState(**row._mapping)


async def check_budget(
    session: AsyncSession, project: Project, *, now: datetime | None = None
) -> None:
    """Raise BudgetExceeded when the month's committed spend has reached a project limit.

    Holds ``FOR NO KEY UPDATE`` on the project row until the caller's transaction ends, so
    submits of one project serialize with each other and with budget changes (the row lock of
    ``PATCH /projects``), while foreign-key checks of inserts into the project are not blocked.
    Spend is what has committed: runs already queued when the limit is reached end
    ``budget_exceeded`` when a worker claims them; a running one may cross it by one call.
    """
    if project.monthly_cost_limit_usd is None and project.monthly_token_limit is None:
        return  # no budget: no lock, no query (the common, fast path)
    await session.execute(
        select(Project.id).where(Project.id == project.id).with_for_update(key_share=True)
    )
    state = await budget_state(session, project.id, now=now)
    if state is not None and state.exhausted:
        raise BudgetExceeded(budget_message(state))


def budget_message(state: BudgetState) -> str:
    if state.cost_spent:
        return (
            f"The project's monthly cost limit of ${state.cost_limit} is spent "
            f"(${to_money(state.month_cost)} this month); raise it or wait for next month"
        )
    return (
        f"The project's monthly token limit of {state.token_limit} is spent "
        f"({state.month_tokens} tokens this month); raise it or wait for next month"
    )


async def _add_to_run(
    session: AsyncSession, run: Run, tokens: dict[str, int], cost: Decimal, *, unknown: bool
) -> None:
    values: dict[str, Any] = {name: getattr(Run, name) + n for name, n in tokens.items()}
    values["cost_usd"] = Run.cost_usd + cost
    if unknown:
        values["cost_unknown"] = True
    columns = [*_TOKEN_COLUMNS, "cost_usd", "cost_unknown"]
    row = (
        await session.execute(
            update(Run)
            .where(Run.id == run.id)
            .values(**values)
            .returning(*(getattr(Run, c) for c in columns))
            .execution_options(synchronize_session=False)
        )
    ).one()
    # The caller's Run object shows the new sums without marking them dirty.
    for name, value in zip(columns, row, strict=True):
        set_committed_value(run, name, value)


async def _add_to_agent(session: AsyncSession, agent_id: uuid.UUID, **deltas: Any) -> None:
    values = {name: getattr(Agent, name) + delta for name, delta in deltas.items()}
    row = (
        await session.execute(
            update(Agent)
            .where(Agent.id == agent_id)
            .values(**values)
            .returning(*(getattr(Agent, c) for c in values))
            .execution_options(synchronize_session=False)
        )
    ).first()
    loaded = session.identity_map.get(identity_key(Agent, agent_id))
    if row is not None and loaded is not None:
        for name, value in zip(values, row, strict=True):
            set_committed_value(loaded, name, value)


async def _upsert_rollup(
    session: AsyncSession,
    run: Run,
    at: datetime,
    provider: str,
    model: str,
    **counters: Any,
) -> None:
    stmt = insert(UsageRollup).values(
        project_id=run.project_id,
        bucket=hour_bucket(at),
        agent_id=run.agent_id,
        provider=provider,
        model=model,
        **counters,
    )
    # `stmt.excluded` builds a new alias on every access: once per statement, not per column.
    excluded, columns = stmt.excluded, _ROLLUP_COLUMNS
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=_ROLLUP_KEY,
            set_={name: columns[name] + excluded[name] for name in counters},
        )
    )


_ROLLUP_COLUMNS = UsageRollup.__table__.c


# The worker's fused conclusions of attempts (backend/runs/pipeline.py) do in one statement, for
# a batch of runs, what record_call (per call) and record_run_finished do: the same rows, the
# same sums, the same once-only rule (the provider_calls unique key). Their accounting parts
# are these SQL fragments.


def priced_calls(
    run_id: uuid.UUID,
    provider: str,
    calls: Iterable[tuple[str, Usage, bool, dict | None]],
    *,
    pricing_override: dict | None = None,
    at: datetime,
) -> list[dict[str, Any]]:
    """An attempt's calls (model, usage, succeeded, error), priced as record_call prices them,
    as rows of the JSON array `CALLS_CTES` reads (exact decimal strings; None when unknown)."""
    rows = []
    for model, usage, succeeded, error in calls:
        price = price_call(provider, model, usage, override=pricing_override, at=at)
        cost = None if price.cost_usd is None else str(price.cost_usd.quantize(_COST_SCALE))
        rows.append(
            {
                "run_id": str(run_id),
                "model": model,
                "succeeded": succeeded,
                **{name: getattr(usage, name) for name in _TOKEN_COLUMNS},
                "cost_usd": cost,
                "price_source": price.source,
                "raw_usage": usage.raw,
                "error": error,
            }
        )
    return rows


# CTEs `calls` (the calls inserted; a (run, attempt, provider, model) already recorded inserts
# nothing and so counts nothing) and `calls_sum` (per run that has any). Reads the caller's CTE
# `run_old` (id, project_id, agent_id, j_attempt, j_provider) and parameters :calls, :now.
CALLS_CTES = """
calls AS (
    INSERT INTO provider_calls AS p (id, run_id, project_id, agent_id, attempt, provider, model,
        succeeded, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
        price_source, raw_usage, error, created_at)
    SELECT gen_random_uuid(), r.id, r.project_id, r.agent_id, r.j_attempt, r.j_provider,
        c.model, c.succeeded, c.input_tokens, c.output_tokens, c.cache_read_tokens,
        c.cache_write_tokens, c.cost_usd, c.price_source, coalesce(c.raw_usage, '{}'), c.error,
        :now::timestamptz
    FROM run_old r JOIN jsonb_to_recordset(:calls::jsonb) AS c(run_id uuid, model text,
        succeeded boolean, input_tokens bigint, output_tokens bigint, cache_read_tokens bigint,
        cache_write_tokens bigint, cost_usd numeric, price_source text, raw_usage jsonb,
        error jsonb) ON c.run_id = r.id
    ON CONFLICT (run_id, attempt, provider, model) DO NOTHING
    RETURNING p.run_id, p.project_id, p.agent_id, p.provider, p.model, p.input_tokens,
        p.output_tokens, p.cache_read_tokens, p.cache_write_tokens, p.cost_usd
),
calls_sum AS (
    SELECT run_id, count(*) AS n,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd, bool_or(cost_usd IS NULL) AS unknown
    FROM calls GROUP BY run_id
)"""

# SET assignments adding the run's `calls_sum s` (LEFT JOINed: NULL when none) to the run `r`
# (as _add_to_run does).
RUN_USAGE_SET = ",\n        ".join(
    [
        *(f"{name} = r.{name} + coalesce(s.{name}, 0)" for name in _TOKEN_COLUMNS),
        "cost_usd = r.cost_usd + coalesce(s.cost_usd, 0)",
        "cost_unknown = r.cost_unknown OR coalesce(s.unknown, false)",
    ]
)
_CALL_TOKENS = " + ".join(f"c.{name}" for name in _TOKEN_COLUMNS)


def agent_usage(finished: str | None) -> tuple[str, str]:
    """(SET assignments, touch condition) adding to each agent `a` (`o`) its inserted calls (as
    _add_to_agent does) and, when `finished` names a CTE of the runs that just ended
    (agent_id, status), their tasks_completed (as record_run_finished does)."""
    sets = [
        f"tokens_used = a.tokens_used"
        f" + coalesce((SELECT sum({_CALL_TOKENS}) FROM calls c WHERE c.agent_id = a.id), 0)",
        "cost_incurred = a.cost_incurred"
        " + coalesce((SELECT sum(c.cost_usd) FROM calls c WHERE c.agent_id = a.id), 0)",
    ]
    touched = "EXISTS (SELECT FROM calls c WHERE c.agent_id = o.id)"
    if finished:
        sets.append(
            f"tasks_completed = a.tasks_completed + (SELECT count(*) FROM {finished} f"
            " WHERE f.agent_id = a.id AND f.status = 'succeeded')"
        )
        touched += f" OR EXISTS (SELECT FROM {finished} f WHERE f.agent_id = o.id)"
    return ",\n        ".join(sets), touched


def rollup_cte(finished: str | None) -> str:
    """CTE `rollup`: the hourly rows of the inserted `calls` (calls, tokens, cost, unknown
    costs) and, when `finished` names a CTE of the runs that just ended (project_id, agent_id,
    provider, model, status), their `runs` and status counters (as record_run_finished does,
    keyed by each run's final model). Grouped by key first: one upsert may not touch a row
    twice. Parameter :bucket."""
    statuses = ("succeeded", "failed", "cancelled", "timed_out")
    ended = (
        "\n        UNION ALL\n        SELECT f.project_id, f.agent_id, f.provider, f.model,"
        " 0, 0, 0, 0, 0, 0, 0, 1, "
        + ", ".join(f"(f.status = '{name}')::int" for name in statuses)
        + f" FROM {finished} f"
        if finished
        else ""
    )
    counters = ("calls", *_TOKEN_COLUMNS, "cost_usd", "unknown_cost_calls", "runs", *statuses)
    names = ", ".join(counters)
    sums = ", ".join(f"sum(x.{name})" for name in counters)
    updates = ",\n        ".join(f"{name} = u.{name} + excluded.{name}" for name in counters)
    return f"""
rollup AS (
    INSERT INTO usage_rollups AS u (project_id, bucket, agent_id, provider, model, {names})
    SELECT x.project_id, :bucket::timestamptz, x.agent_id, x.provider, x.model, {sums}
    FROM (
        SELECT c.project_id, c.agent_id, c.provider, c.model, 1 AS calls, c.input_tokens,
            c.output_tokens, c.cache_read_tokens, c.cache_write_tokens,
            coalesce(c.cost_usd, 0) AS cost_usd, (c.cost_usd IS NULL)::int AS unknown_cost_calls,
            0 AS runs, 0 AS succeeded, 0 AS failed, 0 AS cancelled, 0 AS timed_out
        FROM calls c{ended}
    ) x
    GROUP BY x.project_id, x.agent_id, x.provider, x.model
    ON CONFLICT (project_id, bucket, agent_id, provider, model) DO UPDATE SET
        {updates}
)"""
