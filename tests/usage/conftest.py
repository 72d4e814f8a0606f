"""Usage tests: projects, agents and runs inserted through the ORM; calls and finished runs
accounted by the statements production runs (backend/runs/pipeline.py's conclusions, through
the test's session), at the times the tests choose."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.agent_types.models import AgentType
from backend.agents.models import Agent
from backend.core.db import create_engine, create_sessionmaker
from backend.projects.models import Project
from backend.runs import pipeline
from backend.runs.models import ProviderCall, Run, RunStatus
from backend.runs.pipeline import Conclusion
from backend.usage import service
from backend.usage.tokens import Usage
from tests.support.auth import Actor, Auth

OVERRIDE = {"input_per_mtok_usd": "2", "output_per_mtok_usd": "8"}


@dataclass
class World:
    db: AsyncSession
    owner: Actor
    project: Project
    agent_type: AgentType

    async def agent(self, name: str | None = None, project: Project | None = None) -> Agent:
        agent = Agent(
            project_id=(project or self.project).id,
            agent_type_id=self.agent_type.id,
            name=name or f"agent-{uuid.uuid4().hex[:6]}",
        )
        self.db.add(agent)
        await self.db.commit()
        return agent

    async def run(
        self,
        agent: Agent,
        *,
        provider: str = "anthropic",
        model: str = "claude-sonnet-4-20250514",
        session: AsyncSession | None = None,
    ) -> Run:
        session = session or self.db
        run = Run(
            project_id=agent.project_id,
            agent_id=agent.id,
            input="hello",
            provider=provider,
            model=model,
        )
        session.add(run)
        await session.commit()
        return run

    async def set_budget(self, cost: str | None = None, tokens: int | None = None) -> None:
        await self.db.execute(
            update(Project)
            .where(Project.id == self.project.id)
            .values(
                monthly_cost_limit_usd=Decimal(cost) if cost is not None else None,
                monthly_token_limit=tokens,
            )
        )
        await self.db.commit()
        await self.db.refresh(self.project)


WORKER = "usage-test:1:w"


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
    """One finished provider call, accounted as a worker accounts it (the `account`
    conclusion: the call, the run's and agent's sums, the rollup), in the caller's
    transaction. The call's row (the first one, if it was already recorded)."""
    at = at or datetime.now(UTC)
    calls = service.priced_calls(
        run.id,
        provider,
        [(model, usage, succeeded, error, 0)],
        pricing_override=pricing_override,
        at=at,
    )
    job = {"run_id": run.id, "agent_id": run.agent_id, "j_attempt": attempt, "j_provider": provider}
    await pipeline.conclude_in(session, Conclusion.account, [job], calls=calls, now=at)
    await session.refresh(run)  # the caller's Run shows the new sums
    call = await session.scalar(
        select(ProviderCall).where(
            ProviderCall.run_id == run.id,
            ProviderCall.attempt == attempt,
            ProviderCall.provider == provider,
            ProviderCall.model == model,
        )
    )
    assert call is not None
    return call


_KINDS = {
    RunStatus.succeeded: Conclusion.succeeded,
    RunStatus.failed: Conclusion.failed,
    RunStatus.timed_out: Conclusion.timed_out,
    RunStatus.cancelled: Conclusion.cancelled,
}


async def finish(
    session: AsyncSession,
    run: Run,
    status: RunStatus,
    *,
    at: datetime,
    started_at: datetime | None = None,
    model: str | None = None,
) -> None:
    """The run ends as a worker ends it (its conclusion counts it once, by its final model),
    in the caller's transaction. Test setup: the run is first put in the hands of a worker,
    running since `started_at`."""
    await session.execute(
        update(Run)
        .where(Run.id == run.id)
        .values(status="running", worker_id=WORKER, attempt=1, started_at=started_at or at)
    )
    job = {"run_id": run.id, "agent_id": run.agent_id, "j_worker": WORKER, "j_attempt": 1}
    job |= {"j_provider": run.provider, "j_output": "done", "j_model": model or run.model}
    if status is not RunStatus.succeeded:
        job["j_error"] = {"code": status.value, "message": "test"}
    [row] = await pipeline.conclude_in(session, _KINDS[status], [job], now=at)
    assert row.moved
    await session.refresh(run)


@pytest.fixture
async def world(db: AsyncSession, auth: Auth) -> World:
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = AgentType(
        name="Writer",
        slug=f"writer-{uuid.uuid4().hex[:6]}",
        provider="anthropic",
        model="claude-sonnet-4-20250514",
    )
    db.add(agent_type)
    await db.commit()
    return World(db, owner, project, agent_type)


@pytest.fixture
async def sessions(settings, clean) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Independent sessions (own connections) for concurrent transactions."""
    engine = create_engine(settings.DATABASE_URL, pool_size=30, max_overflow=0)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def wait_for_lock_waiters(db: AsyncSession, count: int, *, deadline: float = 10.0) -> None:
    """Poll until ``count`` backends wait on a lock (a condition, not a sleep-and-hope)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        waiting = await db.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
        await db.rollback()
        if waiting >= count:
            return
        assert loop.time() < end, f"only {waiting} of {count} transactions waited on the lock"
        await asyncio.sleep(0.01)
