"""Usage tests: projects, agents and runs inserted through the ORM; the runs domain's
finishing step imitated with a conditional UPDATE, as the worker does it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from backend.agent_types.models import AgentType
from backend.agents.models import Agent
from backend.core.db import create_engine, create_sessionmaker
from backend.projects.models import Project
from backend.runs.models import Run, RunStatus
from backend.usage import service
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


async def finish(
    session: AsyncSession,
    run: Run,
    status: RunStatus,
    *,
    at: datetime,
    started_at: datetime | None = None,
    model: str | None = None,
) -> None:
    """The runs domain's terminal transition plus the usage hook, in the caller's transaction."""
    values = {"status": status, "finished_at": at, "started_at": started_at or at}
    if model is not None:
        values["model"] = model
    moved = (
        await session.execute(
            update(Run)
            .where(Run.id == run.id, Run.status.in_([RunStatus.queued, RunStatus.running]))
            .values(**values)
            .returning(Run.id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    assert moved is not None
    for key, value in values.items():
        set_committed_value(run, key, value)
    await service.record_run_finished(session, run)


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
