"""Invariant 6 under concurrency: project metrics equal the sum over the project's runs.

200 runs finished by 10 concurrent tasks, each run in its own session and transaction, mixing
retries, fallbacks, failures, cancellations, time-outs and an unpriced model; then the metrics
(read from rollups only) are compared exactly with sums recomputed from runs and provider_calls.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.agents.models import Agent
from backend.runs.models import FINISHED, ProviderCall, Run, RunStatus
from backend.usage import metrics
from backend.usage.tokens import Usage
from tests.usage.conftest import OVERRIDE, World, finish, record_call

START = datetime(2026, 5, 31, 22, 10, tzinfo=UTC)  # spans a day (and month) boundary
PRIMARY = ("anthropic", "claude-sonnet-4-20250514")
FALLBACK = ("anthropic", "claude-3-5-sonnet-20241022")
UNPRICED = ("openai", "gpt-unreleased")
OVERRIDDEN = ("fake", "fake-1")


@dataclass
class Call:
    attempt: int
    model: tuple[str, str]
    usage: Usage
    succeeded: bool
    override: dict | None = None


@dataclass
class Plan:
    status: RunStatus
    final: tuple[str, str]
    calls: list[Call] = field(default_factory=list)
    at: datetime = START


def usage(rng: random.Random, *, cache: bool = False) -> Usage:
    return Usage(
        input_tokens=rng.randint(1, 5000),
        output_tokens=rng.randint(0, 2000),
        cache_read_tokens=rng.randint(0, 9000) if cache else 0,
        cache_write_tokens=rng.randint(0, 3000) if cache else 0,
    )


def plan(rng: random.Random, i: int) -> Plan:
    at = START + timedelta(minutes=7 * i)  # 200 runs over ~23 hours
    kind = i % 8
    ok, fail = RunStatus.succeeded, RunStatus.failed
    if kind == 0:  # succeeded at once, with cache tokens
        return Plan(ok, PRIMARY, [Call(1, PRIMARY, usage(rng, cache=True), True)], at)
    if kind == 1:  # retried: attempt 1 failed after consuming tokens
        calls = [Call(1, PRIMARY, usage(rng), False), Call(2, PRIMARY, usage(rng), True)]
        return Plan(ok, PRIMARY, calls, at)
    if kind == 2:  # fallback within one attempt
        calls = [
            Call(1, PRIMARY, usage(rng), False),
            Call(1, FALLBACK, usage(rng, cache=True), True),
        ]
        return Plan(ok, FALLBACK, calls, at)
    if kind == 3:  # failed after every retry
        return Plan(fail, PRIMARY, [Call(a, PRIMARY, usage(rng), False) for a in (1, 2, 3)], at)
    if kind == 4:  # cancelled while queued: nothing consumed
        return Plan(RunStatus.cancelled, PRIMARY, [], at)
    if kind == 5:  # cancelled while running: keeps what it consumed
        return Plan(RunStatus.cancelled, PRIMARY, [Call(1, PRIMARY, usage(rng), False)], at)
    if kind == 6:  # timed out
        return Plan(RunStatus.timed_out, PRIMARY, [Call(1, PRIMARY, usage(rng), False)], at)
    if i % 16 == 7:  # a model without a price
        return Plan(ok, UNPRICED, [Call(1, UNPRICED, usage(rng), True)], at)
    return Plan(ok, OVERRIDDEN, [Call(1, OVERRIDDEN, usage(rng), True, OVERRIDE)], at)


async def execute(sessions: async_sessionmaker[AsyncSession], run_id, p: Plan) -> None:
    async with sessions() as session:
        run = await session.get(Run, run_id)
        for n, call in enumerate(p.calls):
            await record_call(
                session,
                run,
                attempt=call.attempt,
                provider=call.model[0],
                model=call.model[1],
                usage=call.usage,
                succeeded=call.succeeded,
                error=None if call.succeeded else {"code": "overloaded", "message": "retry"},
                pricing_override=call.override,
                at=p.at + timedelta(seconds=n),
            )
        finished = p.at + timedelta(minutes=3)  # may land in the next hour than its calls
        await finish(session, run, p.status, at=finished, started_at=p.at, model=p.final[1])
        await session.commit()


async def run_burst(world: World, sessions, agents: list[Agent], n: int, seed: int) -> None:
    rng = random.Random(seed)
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        p = plan(rng, i)
        agent = agents[i % len(agents)]
        run = await world.run(agent, provider=p.final[0], model=PRIMARY[1])
        jobs.put_nowait((run.id, p))

    async def worker() -> None:
        while not jobs.empty():
            run_id, p = jobs.get_nowait()
            await execute(sessions, run_id, p)

    await asyncio.gather(*(worker() for _ in range(10)))


def cost_or_none(known: Decimal, calls: int, unknown: int) -> Decimal | None:
    return None if unknown and unknown == calls else known


async def expected_from_runs(db: AsyncSession, project_id) -> dict:
    """Recompute every figure from runs and provider_calls, the per-run truth."""
    runs = list(await db.scalars(select(Run).where(Run.project_id == project_id)))
    calls = list(
        await db.scalars(select(ProviderCall).where(ProviderCall.project_id == project_id))
    )
    names = dict((await db.execute(select(Agent.id, Agent.name))).all())

    def blank() -> dict:
        return defaultdict(int, cost_usd=Decimal(0))

    totals, by_agent, by_model = blank(), defaultdict(blank), defaultdict(blank)
    for run in runs:
        assert run.status in FINISHED
        for group in (totals, by_agent[run.agent_id], by_model[(run.provider, run.model)]):
            group["runs"] += 1
            group[run.status] += 1
    for c in calls:
        for group in (totals, by_agent[c.agent_id], by_model[(c.provider, c.model)]):
            group["calls"] += 1
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
            ):
                group[name] += getattr(c, name)
                group["total_tokens"] += getattr(c, name)
            if c.cost_usd is None:
                group["cost_unknown_calls"] += 1
            else:
                group["cost_usd"] += c.cost_usd
    # The run's own usage columns agree with its calls.
    assert sum(r.input_tokens for r in runs) == totals["input_tokens"]
    assert sum(r.cost_usd for r in runs) == totals["cost_usd"]
    assert sum(r.cost_unknown for r in runs) == len({c.run_id for c in calls if c.cost_usd is None})

    def shape(g: dict) -> dict:
        out = {k: g[k] for k in ("runs", "total_tokens", "cost_unknown_calls")}
        out["cost_usd"] = cost_or_none(g["cost_usd"], g["calls"], g["cost_unknown_calls"])
        return out

    return {
        "totals": {
            **shape(totals),
            **{
                k: totals[k]
                for k in (
                    "succeeded",
                    "failed",
                    "cancelled",
                    "timed_out",
                    "calls",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_tokens",
                    "cache_write_tokens",
                )
            },
        },
        "by_agent": {a: {**shape(g), "name": names[a]} for a, g in by_agent.items()},
        "by_model": {
            m: {**shape(g), **{k: g[k] for k in ("calls", "input_tokens", "output_tokens")}}
            for m, g in by_model.items()
        },
        "agents": {
            a: (g["total_tokens"], g["cost_usd"], g["succeeded"]) for a, g in by_agent.items()
        },
    }


def pick(d: dict, keys) -> dict:
    return {k: d[k] for k in keys}


async def test_metrics_equal_the_sum_over_runs_after_a_concurrent_burst(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agents = [await world.agent(f"agent-{i}") for i in range(5)]
    await run_burst(world, sessions, agents, 200, seed=6)

    expected = await expected_from_runs(world.db, world.project.id)
    got = await metrics.project_metrics(
        world.db, world.project, start=None, end=None, granularity="hour"
    )
    t = got["totals"]
    assert pick(t, expected["totals"]) == expected["totals"]
    assert t["runs"] == 200
    assert t["cancelled"] == 50
    assert t["timed_out"] == 25
    assert t["cost_unknown_calls"] > 0
    assert t["cost_usd"] > 0

    by_agent = {a["agent_id"]: a for a in got["by_agent"]}
    assert by_agent.keys() == expected["by_agent"].keys()
    for agent_id, want in expected["by_agent"].items():
        assert pick(by_agent[agent_id], want) == want

    by_model = {(m["provider"], m["model"]): m for m in got["by_model"]}
    assert by_model.keys() == expected["by_model"].keys()
    for key, want in expected["by_model"].items():
        assert pick(by_model[key], want) == want
    assert by_model[UNPRICED]["cost_usd"] is None  # unknown, never 0
    assert by_model[FALLBACK]["runs"] > 0
    assert by_model[FALLBACK]["calls"] > 0

    # The series adds up to the totals, hour by hour and day by day.
    for granularity in ("hour", "day"):
        got = await metrics.project_metrics(
            world.db, world.project, start=None, end=None, granularity=granularity
        )
        series = got["series"]
        assert sum(p["runs"] for p in series) == 200
        assert sum(p["total_tokens"] for p in series) == t["total_tokens"]
        assert sum(p["cost_usd"] or 0 for p in series) == t["cost_usd"]
    assert [p["bucket"].day for p in series] == [31, 1]

    # Agents' counters agree too.
    rows = await world.db.execute(
        select(Agent.id, Agent.tokens_used, Agent.cost_incurred, Agent.tasks_completed)
        .where(Agent.project_id == world.project.id)
        .execution_options(populate_existing=True)
    )
    for agent_id, tokens, cost, tasks in rows:
        if agent_id in expected["agents"]:
            assert (tokens, cost, tasks) == expected["agents"][agent_id]
