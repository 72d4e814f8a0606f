"""Accounting by the conclusions production runs: exact costs, once-only counting, unknown
prices (calls through the `account` conclusion, runs through their final one)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select

from backend.agents.models import Agent
from backend.runs.models import ProviderCall, Run, RunStatus
from backend.usage.models import UsageRollup
from backend.usage.tokens import Usage
from tests.usage.conftest import OVERRIDE, World, finish, record_call

M = Decimal(1_000_000)
AT = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
HOUR = datetime(2026, 3, 14, 15, tzinfo=UTC)


async def rollups(world: World) -> list[UsageRollup]:
    rows = await world.db.scalars(
        select(UsageRollup)
        .order_by(UsageRollup.bucket, UsageRollup.model)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def test_override_cost_is_tokens_times_price_on_call_run_agent_and_rollup(
    world: World,
) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="fake", model="fake-1")
    usage = Usage(input_tokens=1234, output_tokens=567, raw={"in": 1234})
    call = await record_call(
        world.db,
        run,
        attempt=1,
        provider="fake",
        model="fake-1",
        usage=usage,
        succeeded=True,
        pricing_override=OVERRIDE,
        at=AT,
    )
    await world.db.commit()
    expected = (1234 * Decimal(2) + 567 * Decimal(8)) / M
    assert expected == Decimal("0.007004")
    assert call.cost_usd == expected
    assert call.price_source == "override"
    assert call.raw_usage == {"in": 1234}
    assert (call.input_tokens, call.output_tokens, call.created_at) == (1234, 567, AT)
    # The caller's Run object shows the sums at once, and so does the database.
    assert (run.input_tokens, run.output_tokens, run.cost_usd) == (1234, 567, expected)
    stored = await world.db.get(Run, run.id, populate_existing=True)
    assert (stored.cost_usd, stored.cost_unknown) == (expected, False)
    agent_row = await world.db.get(Agent, agent.id, populate_existing=True)
    assert (agent_row.tokens_used, agent_row.cost_incurred) == (1801, expected)
    [rollup] = await rollups(world)
    assert (rollup.bucket, rollup.calls, rollup.runs) == (HOUR, 1, 0)
    assert (rollup.input_tokens, rollup.output_tokens, rollup.cost_usd) == (1234, 567, expected)


async def test_anthropic_cache_tokens_priced_at_cache_rates_end_to_end(world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent)
    first = Usage(
        input_tokens=2000, output_tokens=800, cache_read_tokens=10_000, cache_write_tokens=3000
    )
    second = Usage(input_tokens=1000, output_tokens=500)
    for attempt, usage in ((1, first), (2, second)):
        await record_call(
            world.db,
            run,
            attempt=attempt,
            provider="anthropic",
            model="claude-sonnet-4-20250514",
            usage=usage,
            succeeded=attempt == 2,
            at=AT,
        )
    await world.db.commit()
    # $3 in, $15 out, $0.30 cache read, $3.75 cache write per MTok; input excludes cache.
    one = (2000 * 3 + 10_000 * Decimal("0.3") + 3000 * Decimal("3.75") + 800 * 15) / M
    two = (1000 * 3 + 500 * 15) / M
    assert (one, two) == (Decimal("0.03225"), Decimal("0.0105"))
    assert run.cost_usd == one + two
    assert (run.cache_read_tokens, run.cache_write_tokens) == (10_000, 3000)
    [rollup] = await rollups(world)
    assert (rollup.calls, rollup.cost_usd, rollup.input_tokens) == (2, one + two, 3000)
    assert (rollup.cache_read_tokens, rollup.cache_write_tokens) == (10_000, 3000)
    agent_row = await world.db.get(Agent, agent.id, populate_existing=True)
    assert agent_row.tokens_used == 2000 + 800 + 10_000 + 3000 + 1000 + 500


async def test_openai_cached_prompt_tokens_end_to_end(world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="openai", model="gpt-4o-2024-08-06")
    # OpenAI said prompt_tokens=5,000 with 3,000 cached; the adapter normalized it.
    usage = Usage(input_tokens=2000, output_tokens=400, cache_read_tokens=3000)
    call = await record_call(
        world.db,
        run,
        attempt=1,
        provider="openai",
        model="gpt-4o-2024-08-06",
        usage=usage,
        succeeded=True,
        at=AT,
    )
    await world.db.commit()
    expected = (2000 * Decimal("2.5") + 3000 * Decimal("1.25") + 400 * 10) / M
    assert call.cost_usd == run.cost_usd == expected == Decimal("0.01275")
    assert call.price_source.endswith("openai/gpt-4o")
    [rollup] = await rollups(world)
    assert rollup.cost_usd == expected


async def test_unknown_model_has_no_cost_is_flagged_and_counted_never_zero(world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="openai", model="gpt-from-the-future")
    known = Usage(input_tokens=1000, output_tokens=100)
    unknown = Usage(input_tokens=70, output_tokens=30)
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="openai",
        model="gpt-4o-2024-08-06",
        usage=known,
        succeeded=False,
        error={"code": "overloaded", "message": "x"},
        at=AT,
    )
    call = await record_call(
        world.db,
        run,
        attempt=1,
        provider="openai",
        model="gpt-from-the-future",
        usage=unknown,
        succeeded=True,
        at=AT,
    )
    await world.db.commit()
    assert call.cost_usd is None
    assert call.price_source == "unknown:openai/gpt-from-the-future"
    known_cost = (1000 * Decimal("2.5") + 100 * 10) / M
    stored = await world.db.get(Run, run.id, populate_existing=True)
    # The known part stays counted; the flag says the total is a lower bound.
    assert (stored.cost_unknown, stored.cost_usd) == (True, known_cost)
    assert (stored.input_tokens, stored.output_tokens) == (1070, 130)
    by_model = {r.model: r for r in await rollups(world)}
    assert by_model["gpt-from-the-future"].unknown_cost_calls == 1
    assert by_model["gpt-from-the-future"].cost_usd == 0  # the known sum; see metrics for null
    assert by_model["gpt-4o-2024-08-06"].unknown_cost_calls == 0


async def test_duplicate_call_for_the_same_attempt_and_model_is_counted_once(
    world: World,
) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="fake", model="fake-1")
    usage = Usage(input_tokens=10, output_tokens=5)
    kwargs = {"attempt": 1, "provider": "fake", "model": "fake-1", "usage": usage}
    first = await record_call(world.db, run, succeeded=False, at=AT, **kwargs)
    again = await record_call(world.db, run, succeeded=True, at=AT, **kwargs)
    await record_call(world.db, run, succeeded=True, at=AT, **{**kwargs, "attempt": 2})
    await world.db.commit()
    assert again.id == first.id
    assert again.succeeded is False
    count = await world.db.scalar(select(func.count()).select_from(ProviderCall))
    assert count == 2
    assert run.input_tokens == 20
    [rollup] = await rollups(world)
    assert (rollup.calls, rollup.input_tokens) == (2, 20)


async def test_run_finished_counts_the_run_once_by_final_model_and_status(world: World) -> None:
    agent = await world.agent()
    ok = await world.run(agent)
    failed = await world.run(agent)
    await finish(world.db, ok, RunStatus.succeeded, at=AT, model="claude-3-5-sonnet-20241022")
    await finish(world.db, failed, RunStatus.failed, at=AT)
    await world.db.commit()
    by_model = {r.model: r for r in await rollups(world)}
    fallback = by_model["claude-3-5-sonnet-20241022"]
    assert (fallback.runs, fallback.succeeded, fallback.failed) == (1, 1, 0)
    primary = by_model["claude-sonnet-4-20250514"]
    assert (primary.runs, primary.succeeded, primary.failed) == (1, 0, 1)
    agent_row = await world.db.get(Agent, agent.id, populate_existing=True)
    assert agent_row.tasks_completed == 1


async def test_rolled_back_call_is_not_counted_and_can_be_recorded_again(world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="fake", model="fake-1")
    usage = Usage(input_tokens=10, output_tokens=5)
    kwargs = {"attempt": 1, "provider": "fake", "model": "fake-1", "usage": usage}
    run_id = run.id
    await record_call(world.db, run, succeeded=True, at=AT, **kwargs)
    await world.db.rollback()
    assert await world.db.scalar(select(func.count()).select_from(UsageRollup)) == 0
    run = await world.db.get(Run, run_id)
    await record_call(world.db, run, succeeded=True, at=AT, **kwargs)
    await world.db.commit()
    assert run.input_tokens == 10
    [rollup] = await rollups(world)
    assert rollup.input_tokens == 10
