"""Runs tests: a world (owner, project, fake agent types, agents) and a real in-process ARQ
worker on the test's event loop, with short heartbeat/sweep/retry intervals."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from arq.worker import Worker
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.agent_types.models import AgentType
from backend.agents.models import Agent
from backend.config import Settings
from backend.core.db import create_sessionmaker
from backend.projects.models import Project
from backend.runs import streams
from backend.runs.models import ProviderCall, Run
from backend.runs.pipeline import Pipeline
from backend.worker import AgentryWorker, run_worker, worker_options
from tests.runs.parking import WORKER, Parker
from tests.support.auth import Actor, Auth

FAST = {
    "WORKER_POLL_DELAY_SECONDS": 0.01,
    "WORKER_HEARTBEAT_SECONDS": 0.2,
    "WORKER_TTL_SECONDS": 1.0,
    "RUN_SWEEP_INTERVAL_SECONDS": 1,
    "RUN_REAP_GRACE_SECONDS": 1.0,
    "RUN_RETRY_BASE_SECONDS": 0.05,
    "RUN_RETRY_MAX_SECONDS": 0.2,
}
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, every: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(every)


@dataclass
class World:
    db: AsyncSession
    client: httpx.AsyncClient
    auth: Auth
    owner: Actor
    project: Project
    sessions: async_sessionmaker[AsyncSession]

    async def agent_type(self, **fields: Any) -> AgentType:
        values: dict[str, Any] = {
            "name": "Echo",
            "slug": f"echo-{uuid.uuid4().hex[:8]}",
            "provider": "fake",
            "model": "fake-echo",
            "system_prompt": "be brief",
            "timeout_seconds": 30,
            "max_retries": 3,
            "config": {},
        }
        values.update(fields)
        agent_type = AgentType(**values)
        self.db.add(agent_type)
        await self.db.commit()
        return agent_type

    async def agent(self, agent_type: AgentType | None = None, **config: Any) -> Agent:
        agent_type = agent_type or await self.agent_type(config=config)
        agent = Agent(
            project_id=self.project.id,
            agent_type_id=agent_type.id,
            name=f"agent-{uuid.uuid4().hex[:6]}",
        )
        self.db.add(agent)
        await self.db.commit()
        return agent

    def runs_url(self, agent: Agent | uuid.UUID) -> str:
        agent_id = agent if isinstance(agent, uuid.UUID) else agent.id
        return f"/api/v1/projects/{self.project.id}/agents/{agent_id}/runs"

    def run_url(self, run_id: str | uuid.UUID) -> str:
        return f"/api/v1/projects/{self.project.id}/runs/{run_id}"

    async def submit(self, agent: Agent, text: str = "hello world", **body: Any) -> dict:
        response = await self.client.post(
            self.runs_url(agent), json={"input": text, **body}, headers=self.owner.headers
        )
        assert response.status_code == 202, response.text
        return response.json()

    async def run(self, run_id: str | uuid.UUID) -> dict:
        response = await self.client.get(self.run_url(run_id), headers=self.owner.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def finished(self, run_id: str | uuid.UUID, *, timeout: float = 10.0) -> dict:
        """Wait (polling the database, not the rate-limited API) until the run ended."""

        async def done() -> bool:
            async with self.sessions() as session:
                status = await session.scalar(select(Run.status).where(Run.id == run_id))
            return status in TERMINAL

        await eventually(done, timeout=timeout, every=0.1)
        return await self.run(run_id)

    async def agent_row(self, agent: Agent) -> Agent:
        row = await self.db.scalar(
            select(Agent).where(Agent.id == agent.id).execution_options(populate_existing=True)
        )
        assert row is not None
        return row

    async def calls_tokens(self, agent: Agent) -> int:
        pc = ProviderCall
        total = pc.input_tokens + pc.output_tokens + pc.cache_read_tokens + pc.cache_write_tokens
        return await self.db.scalar(
            select(func.coalesce(func.sum(total), 0)).where(pc.agent_id == agent.id)
        )

    async def runs_of(self, agent: Agent) -> list[Run]:
        query = select(Run).where(Run.agent_id == agent.id).order_by(Run.seq)
        return list(await self.db.scalars(query.execution_options(populate_existing=True)))


@pytest.fixture
async def world(
    db: AsyncSession, client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> World:
    owner = await auth.user()
    project = await auth.project(owner)
    return World(db, client, auth, owner, project, create_sessionmaker(engine))


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
async def worker(worker_settings: Settings, clean: None) -> AsyncIterator[Worker]:
    """A real ARQ worker on this event loop (same Postgres, Redis and queue as the app)."""
    started = await run_worker(worker_settings)
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def cronless_worker(worker_settings: Settings, clean: None) -> AsyncIterator[Worker]:
    """A worker without sweeper and reaper: what it runs, something else must have dispatched."""
    options = {**worker_options(worker_settings), "cron_jobs": [], "handle_signals": False}
    started = AgentryWorker(**options)
    started.main_task = asyncio.create_task(started.main())
    try:
        yield started
    finally:
        await started.close()


def spawn_worker_process(settings: Settings, log: Path, **env: object) -> subprocess.Popen:
    """`agentry worker` in a process of its own (a test may SIGKILL it), with FAST intervals."""
    values = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.DATABASE_URL or "",
        "REDIS_URL": settings.REDIS_URL or "",
        "SECRET_KEY": settings.secret_key,
        "QUEUE_NAME": settings.QUEUE_NAME,
        "LOG_LEVEL": "WARNING",
        **{name: str(value) for name, value in {**FAST, **env}.items()},
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "worker"],
            cwd=Path(__file__).resolve().parents[2],
            env=values,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def parker(world: World, settings: Settings, app) -> AsyncIterator[Parker]:
    """Parks runs in requires_action as the worker does (tests/runs/parking.py)."""
    pipe = await Pipeline.connect(settings.model_copy(update={"DB_POOL_SIZE": 1}), WORKER)
    try:
        yield Parker(world, pipe, streams.Publisher(app.state.redis, app.state.settings))
    finally:
        await pipe.close()


@pytest.fixture(scope="module")
async def server(app) -> AsyncIterator[str]:
    """The test app served by uvicorn on 127.0.0.1 (its lifespan already runs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, ws="websockets-sansio", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
