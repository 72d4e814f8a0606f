"""Test harness: a real Postgres and Redis for the whole session, the real app per session.

Servers: TEST_DATABASE_URL / TEST_REDIS_URL when set; else embedded ones under a
temporary directory; else testcontainers when a Docker engine answers. Each
session gets its own database built by `alembic upgrade head`; every test
starts from empty tables and an empty Redis database.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from backend.config import Settings
from backend.core.db import Base, create_sessionmaker
from backend.main import create_app
from tests.support import servers
from tests.support.auth import Auth


@pytest.fixture(scope="session")
def server_urls() -> Iterator[servers.ServerUrls]:
    # Not pytest's tmp_path: pytest resets its root to 0700, which would lock out the
    # unprivileged user embedded Postgres runs as when we are root.
    tmp = Path(tempfile.mkdtemp(prefix="agentry-test-"))
    try:
        with ExitStack() as stack:
            yield servers.provide(stack, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(server_urls: servers.ServerUrls) -> AsyncIterator[str]:
    name = f"agentry_test_{os.getpid()}_{secrets.token_hex(3)}"
    # Alembic's async env runs its own loop: keep it off this one.
    url = await asyncio.to_thread(servers.create_database, server_urls.postgres, name)
    await asyncio.to_thread(servers.migrate, url, "head")
    yield url
    await asyncio.to_thread(servers.drop_database, server_urls.postgres, name)


@pytest.fixture(scope="session")
def settings(database_url: str, server_urls: servers.ServerUrls) -> Settings:
    return make_settings(database_url, server_urls.redis)


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "ENVIRONMENT": "test",
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "DB_POOL_SIZE": 10,
        "QUEUE_NAME": f"agentry:test:{uuid.uuid4().hex[:8]}",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    # Pre-ping: tests that kill the database's connections (a simulated Postgres restart,
    # tests/test_failure_modes.py) must not break the next test's fixtures.
    engine = create_async_engine(settings.DATABASE_URL, pool_size=5, pool_pre_ping=True)  # type: ignore[arg-type]
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def app(settings: Settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def clean(engine: AsyncEngine, app) -> None:
    """Every test that touches state starts from empty tables and an empty Redis database."""
    # DELETE, children first: on tables this small it takes ~3 ms where TRUNCATE takes
    # ~100 ms (new files and an fsync per table), i.e. seconds over the suite.
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())
    await app.state.redis.flushdb()


@pytest.fixture
async def db(engine: AsyncEngine, clean: None) -> AsyncIterator[AsyncSession]:
    async with create_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
async def client(app, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def auth(db: AsyncSession, settings: Settings) -> Auth:
    return Auth(db, settings)
