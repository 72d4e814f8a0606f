"""check_budget: the boundary, concurrent bursts, raised limits, a new month, token limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.agents.models import Agent
from backend.core.errors import BudgetExceeded
from backend.projects.models import Project
from backend.runs.models import Run
from backend.usage import service
from backend.usage.tokens import Usage
from tests.usage.conftest import World, record_call, wait_for_lock_waiters

AT = datetime(2026, 3, 14, 12, tzinfo=UTC)
NOW = datetime(2026, 3, 20, 9, tzinfo=UTC)
# $1 per million input tokens: N input tokens cost exactly N micro-dollars.
MICRO = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "1"}


async def spend(world: World, agent: Agent, tokens: int, *, at: datetime = AT) -> None:
    run = await world.run(agent, provider="fake", model="fake-1")
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="fake",
        model="fake-1",
        usage=Usage(input_tokens=tokens),
        succeeded=True,
        pricing_override=MICRO,
        at=at,
    )
    await world.db.commit()


async def submit(sessions: async_sessionmaker[AsyncSession], world: World, agent: Agent) -> bool:
    """A submit transaction as the runs domain does it: check, insert, commit."""
    async with sessions() as session:
        project = await session.get(Project, world.project.id)
        try:
            await service.check_budget(session, project, now=NOW)
        except BudgetExceeded:
            await session.rollback()
            return False
        session.add(
            Run(
                project_id=project.id, agent_id=agent.id, input="x", provider="fake", model="fake-1"
            )
        )
        await session.commit()
        return True


async def check(sessions: async_sessionmaker[AsyncSession], world: World, now=NOW) -> None:
    """check_budget in a transaction of its own, rolled back like a refused submit."""
    async with sessions() as session:
        project = await session.get(Project, world.project.id)
        await service.check_budget(session, project, now=now)


async def runs_count(db: AsyncSession) -> int:
    return await db.scalar(select(func.count()).select_from(Run))


async def test_no_budget_never_refuses(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await spend(world, agent, 10**9)
    await check(sessions, world, NOW)


async def test_cost_limit_boundary_spend_equal_is_refused_just_below_is_not(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await world.set_budget(cost="1.000000")
    await spend(world, agent, 999_999)  # $0.999999
    await check(sessions, world, NOW)
    await spend(world, agent, 1)  # exactly $1.000000
    with pytest.raises(BudgetExceeded, match=r"monthly cost limit of \$1.000000"):
        await check(sessions, world, NOW)
    state = await service.budget_state(world.db, world.project.id, now=NOW)
    assert state is not None
    assert (state.month_cost, state.month_tokens, state.cost_spent) == (1, 1_000_000, True)


async def test_zero_limit_refuses_everything(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await world.set_budget(cost="0")
    with pytest.raises(BudgetExceeded):
        await check(sessions, world, NOW)


async def test_token_limit_counts_every_kind_of_token(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await world.set_budget(tokens=1000)
    run = await world.run(agent, provider="openai", model="no-such-model")
    usage = Usage(
        input_tokens=100, output_tokens=200, cache_read_tokens=300, cache_write_tokens=399
    )
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="openai",
        model="no-such-model",
        usage=usage,
        succeeded=True,
        at=AT,
    )
    await world.db.commit()
    await check(sessions, world, NOW)  # 999 < 1000
    # An unpriced model still counts toward the token limit.
    await spend(world, agent, 1)
    with pytest.raises(BudgetExceeded, match="token limit of 1000"):
        await check(sessions, world, NOW)


async def test_raising_the_limit_lets_runs_through_again(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await world.set_budget(cost="0.5")
    await spend(world, agent, 500_000)
    with pytest.raises(BudgetExceeded):
        await check(sessions, world, NOW)
    await world.set_budget(cost="0.6")
    await check(sessions, world, NOW)


async def test_a_new_utc_month_starts_from_zero(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await world.set_budget(cost="1", tokens=10**6)
    await spend(world, agent, 1_000_000, at=datetime(2026, 3, 31, 23, 59, tzinfo=UTC))
    for now in (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)):
        with pytest.raises(BudgetExceeded):
            await check(sessions, world, now)
    await check(sessions, world, datetime(2026, 4, 1, tzinfo=UTC))
    # Spend from a later month does not count against an earlier one either.
    await check(sessions, world, datetime(2026, 2, 28, tzinfo=UTC))


async def test_burst_of_20_concurrent_submits_at_the_limit_all_refused(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    agent = await world.agent()
    await world.set_budget(cost="1")
    await spend(world, agent, 1_000_000)
    before = await runs_count(world.db)
    results = await asyncio.gather(*(submit(sessions, world, agent) for _ in range(20)))
    assert results == [False] * 20
    assert await runs_count(world.db) == before


async def test_burst_of_20_concurrent_submits_just_below_the_limit_all_admitted(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Documented semantics: admission looks at committed spend; queued runs are not reserved.
    agent = await world.agent()
    await world.set_budget(cost="1")
    await spend(world, agent, 999_999)
    before = await runs_count(world.db)
    results = await asyncio.gather(*(submit(sessions, world, agent) for _ in range(20)))
    assert results == [True] * 20
    assert await runs_count(world.db) == before + 20


async def test_submits_queued_behind_a_budget_change_see_the_new_limit(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The row lock orders submits after a concurrent budget change: without it, a submit whose
    snapshot predates the change's commit would be admitted under the old limit."""
    agent = await world.agent()
    await world.set_budget(cost="10")
    await spend(world, agent, 2_000_000)  # $2 of $10
    async with sessions() as editor:
        await editor.execute(
            update(Project).where(Project.id == world.project.id).values(monthly_cost_limit_usd=2)
        )
        burst = [asyncio.create_task(submit(sessions, world, agent)) for _ in range(20)]
        await wait_for_lock_waiters(world.db, 20)
        await editor.commit()
    assert await asyncio.gather(*burst) == [False] * 20
