"""Usage accounting: every provider call priced and counted once, every run counted once.

The accounting is SQL fragments (below) that the runs domain embeds in its conclusion
statements (backend/runs/pipeline.py), the one implementation for the worker, the API's
cancels and the reaper:
- each provider call -> a provider_calls row, the run's and the agent's usage columns, the
  hourly usage rollup; atomic increments only (no read-modify-write), so concurrent
  transactions never lose an update; once per (run, attempt, provider, model);
- each run, once, by the statement that made it final -> the rollup's ``runs`` and status
  counters, the agent's ``tasks_completed`` when it succeeded.
``budget_sql`` is the budget rule: at submit (``check_budget``), at claim, in the metrics.

Transactions of one agent serialize on the agent row (locked first), and rollup rows are keyed
by agent, so the upserts cannot deadlock each other.

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
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.core.db import utcnow
from backend.core.errors import BudgetExceeded
from backend.projects.dependencies import ProjectRow
from backend.projects.models import Project
from backend.usage.pricing import price_call, to_money
from backend.usage.tokens import Usage
from backend.webhooks import outbox

log = structlog.get_logger()

_COST_SCALE = Decimal("1e-10")  # the NUMERIC(20, 10) columns' scale
_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
_ROLLUP_KEY = ["project_id", "bucket", "agent_id", "provider", "model"]
_ROLLUP_TOKENS = "u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens"
_CALL_TOKENS = " + ".join(f"c.{name}" for name in _TOKEN_COLUMNS)


def hour_bucket(at: datetime) -> datetime:
    """The UTC hour a moment falls in; naive datetimes are taken as UTC."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


# The budget rule, once: a project's committed usage in the UTC calendar month of `now` against
# its limits. One SQL subquery (columns below) for every reader: submit (check_budget), the
# worker's claim (backend/runs/pipeline.py) and the metrics. `project` and `now` are SQL
# expressions. Projects without a budget give no row, so the month's sum is never computed
# for them.
def budget_sql(project: str, now: str, *, with_calls: bool = False) -> str:
    """`with_calls`: also count the calls the caller's statement inserts (its CTE `calls`),
    which its own snapshot cannot see in the rollups yet."""
    month = f"date_trunc('month', {now} AT TIME ZONE 'UTC')"
    cost, tokens = "0", "0"
    if with_calls:
        mine = "FROM calls c WHERE c.project_id = p.id"
        cost = f"(SELECT coalesce(sum(c.cost_usd), 0) {mine})"
        tokens = f"(SELECT coalesce(sum({_CALL_TOKENS}), 0) {mine})"
    return f"""(
    SELECT p.monthly_cost_limit_usd AS cost_limit, p.monthly_token_limit AS token_limit,
        s.cost AS month_cost, s.tokens AS month_tokens,
        coalesce(s.cost >= p.monthly_cost_limit_usd, false) AS cost_spent,
        coalesce(s.tokens >= p.monthly_token_limit, false) AS tokens_spent
    FROM projects p CROSS JOIN LATERAL (
        SELECT coalesce(sum(u.cost_usd), 0) + {cost} AS cost,
            (coalesce(sum({_ROLLUP_TOKENS}), 0) + {tokens})::bigint AS tokens
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

    @classmethod
    def of(cls, row: Any) -> BudgetState | None:
        """From a row carrying `budget_sql`'s columns (a mapping); None without a budget."""
        if row["cost_limit"] is None and row["token_limit"] is None:
            return None
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


_BUDGET = text(f"SELECT * FROM {budget_sql(':project_id', 'CAST(:now AS timestamptz)')} b")


async def budget_state(
    session: AsyncSession, project_id: uuid.UUID, *, now: datetime | None = None
) -> BudgetState | None:
    """The project's budget and this month's committed spend; None without a budget."""
    params = {"project_id": project_id, "now": now or utcnow()}
    row = (await session.execute(_BUDGET, params)).first()
    return None if row is None else BudgetState(**row._mapping)


async def check_budget(
    session: AsyncSession, project: ProjectRow, *, now: datetime | None = None
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


# The conclusions of runs (backend/runs/pipeline.py) account in one statement, for a batch of
# runs, with these fragments.


def priced_calls(
    run_id: uuid.UUID,
    provider: str,
    calls: Iterable[tuple[str, Usage, bool, dict | None, int]],
    *,
    pricing_override: dict | None = None,
    at: datetime,
) -> list[dict[str, Any]]:
    """An attempt's calls (model, usage, succeeded, error, step index), priced when they ended,
    as rows of the JSON array `CALLS_CTES` reads (exact decimal strings; None when unknown)."""
    rows = []
    for model, usage, succeeded, error, step in calls:
        price = price_call(provider, model, usage, override=pricing_override, at=at)
        cost = None if price.cost_usd is None else str(price.cost_usd.quantize(_COST_SCALE))
        rows.append(
            {
                "run_id": str(run_id),
                "step": step,
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


# CTEs `calls` (the calls inserted; a (run, attempt, step, provider, model) already recorded inserts
# nothing and so counts nothing) and `calls_sum` (per run that has any). Reads the caller's CTE
# `run_old` (id, project_id, agent_id, j_attempt, j_provider) and parameters :calls, :now.
CALLS_CTES = """
calls AS (
    INSERT INTO provider_calls AS p (id, run_id, project_id, agent_id, attempt, step, provider,
        model, succeeded, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
        price_source, raw_usage, error, created_at)
    SELECT gen_random_uuid(), r.id, r.project_id, r.agent_id, r.j_attempt, c.step, r.j_provider,
        c.model, c.succeeded, c.input_tokens, c.output_tokens, c.cache_read_tokens,
        c.cache_write_tokens, c.cost_usd, c.price_source, coalesce(c.raw_usage, '{}'), c.error,
        :now::timestamptz
    FROM run_old r JOIN jsonb_to_recordset(:calls::jsonb) AS c(run_id uuid, step int, model text,
        succeeded boolean, input_tokens bigint, output_tokens bigint, cache_read_tokens bigint,
        cache_write_tokens bigint, cost_usd numeric, price_source text, raw_usage jsonb,
        error jsonb) ON c.run_id = r.id
    ON CONFLICT (run_id, attempt, step, provider, model) DO NOTHING
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

RUN_USAGE_SET = ",\n        ".join(
    [
        *(f"{name} = r.{name} + coalesce(s.{name}, 0)" for name in _TOKEN_COLUMNS),
        "cost_usd = r.cost_usd + coalesce(s.cost_usd, 0)",
        "cost_unknown = r.cost_unknown OR coalesce(s.unknown, false)",
    ]
)


def agent_usage(finished: str | None) -> tuple[str, str]:
    """(SET assignments, touch condition) adding to each agent `a` (`o`) its inserted calls
    and, when `finished` names a CTE of the runs that just ended (agent_id, status), their
    tasks_completed."""
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
    provider, model, status), their `runs` and status counters, keyed by each run's final
    model. Grouped by key first: one upsert may not touch a row
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


# budget.exhausted: once per project, UTC month and limit (the event's dedupe key), written by
# the first conclusion whose committed usage (the month's, plus this statement's `calls`)
# reaches a limit. Reads `calls` and :now.
_EXHAUSTED = f"""
SELECT b.project_id, b.project_id AS ordering_key, jsonb_build_object(
        'project_id', b.project_id, 'limit', l.kind,
        'budget', jsonb_build_object('monthly_cost_limit_usd', b.cost_limit,
            'monthly_token_limit', b.token_limit),
        'month_cost_usd', b.month_cost, 'month_tokens', b.month_tokens
    ) AS payload, :now::timestamptz AS created_at,
    'budget.exhausted/' || b.project_id || '/'
        || to_char(:now::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM') || '/' || l.kind
        AS dedupe_key
FROM (
    SELECT x.project_id, bs.cost_limit, bs.token_limit, bs.month_cost + x.cost AS month_cost,
        bs.month_tokens + x.tokens AS month_tokens
    FROM (
        SELECT c.project_id, coalesce(sum(c.cost_usd), 0) AS cost,
            sum({_CALL_TOKENS})::bigint AS tokens
        FROM calls c GROUP BY c.project_id
    ) x CROSS JOIN LATERAL {budget_sql("x.project_id", ":now::timestamptz")} bs
) b CROSS JOIN LATERAL (VALUES ('cost', b.month_cost >= b.cost_limit),
    ('tokens', b.month_tokens >= b.token_limit)) AS l(kind, spent)
WHERE l.spent"""
BUDGET_EVENT_CTES = outbox.ctes("budget_ev", outbox.EventType.budget_exhausted, _EXHAUSTED)
