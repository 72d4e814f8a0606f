"""Agents, agent types and status setup for the agents tests; a second app with 100× rate limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agent_types.models import AgentType
from backend.agents import state
from backend.agents.models import Agent, AgentEvent, AgentStatus
from backend.main import create_app
from backend.projects.models import Project
from tests.conftest import make_settings

S = AgentStatus
# How test setup reaches each status from idle: through the state machine, never a raw UPDATE.
PATH_FROM_IDLE: dict[AgentStatus, list[AgentStatus]] = {
    S.idle: [],
    S.working: [S.working],
    S.waiting: [S.working, S.waiting],
    S.paused: [S.paused],
    S.terminated: [S.terminated],
}


class Agents:
    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def agent_type(self, *, is_active: bool = True, slug: str | None = None) -> AgentType:
        slug = slug or f"t-{uuid.uuid4().hex[:8]}"
        agent_type = AgentType(
            name=f"Type {slug}",
            slug=slug,
            provider="fake",
            model="fake-echo",
            system_prompt="be brief",
            is_active=is_active,
        )
        self.db.add(agent_type)
        await self.db.commit()
        return agent_type

    async def agent(
        self,
        project: Project,
        status: AgentStatus = S.idle,
        *,
        agent_type: AgentType | None = None,
        **fields: object,
    ) -> Agent:
        agent_type = agent_type or await self.agent_type()
        agent = Agent(
            project_id=project.id,
            agent_type_id=agent_type.id,
            name=f"agent-{uuid.uuid4().hex[:6]}",
            **fields,
        )
        self.db.add(agent)
        await self.db.commit()
        await self.put_in(agent.id, status)
        return agent

    async def put_in(self, agent_id: uuid.UUID, status: AgentStatus) -> None:
        for step in PATH_FROM_IDLE[status]:
            await state.transition(self.db, agent_id, step, reason="test setup")
        await self.db.commit()

    async def status(self, agent_id: uuid.UUID) -> str:
        return await self.db.scalar(select(Agent.status).where(Agent.id == agent_id))

    async def history(self, agent_id: uuid.UUID) -> list[tuple[str, str]]:
        rows = await self.db.execute(
            select(AgentEvent.from_status, AgentEvent.to_status)
            .where(AgentEvent.agent_id == agent_id)
            .order_by(AgentEvent.seq)
        )
        return [tuple(r) for r in rows]


@pytest.fixture
def agents(db: AsyncSession) -> Agents:
    return Agents(db)


@pytest.fixture(scope="session")
async def fast_app(settings):
    """The app with RATE_LIMIT_MULTIPLIER=100, for tests that send many requests at once."""
    fast = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        RATE_LIMIT_MULTIPLIER=100,
        DB_POOL_SIZE=21,
        DB_MAX_OVERFLOW=0,
    )
    app = create_app(fast)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def fast_client(fast_app, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fast_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@contextmanager
def count_statements(app):
    """Count the SQL statements the app's engine sends while the block runs."""
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)
