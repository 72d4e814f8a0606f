"""Postgres and Redis for the bench: embedded ones under .bench/services (as `make run` does),
or BENCH_DATABASE_URL (a server's maintenance database) and BENCH_REDIS_URL when set.

Each bench run gets a fresh database (dropped at the end) migrated to head, and an empty
Redis database (FLUSHDB: give BENCH_REDIS_URL a database of its own).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from backend.cli import migrate_to_head


@dataclass(frozen=True)
class Services:
    database_url: str  # postgresql+asyncpg://… of the bench database (SQLAlchemy)
    redis_url: str
    embedded: bool

    @property
    def asyncpg_dsn(self) -> str:
        """The same database for raw asyncpg (reference app B, seeding)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _plain(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _with_database(server_url: str, name: str) -> str:
    url = make_url(server_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    return url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )


async def _admin(server_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(server_dsn))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _flush_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def provide(stack: ExitStack, data_dir: Path) -> Services:
    """Start (or reach) the servers, create and migrate a fresh database; undone by `stack`."""
    server_url = os.environ.get("BENCH_DATABASE_URL")
    redis_url = os.environ.get("BENCH_REDIS_URL")
    embedded = not (server_url and redis_url)
    if embedded:
        from backend.core.devservices import EmbeddedServices

        services = stack.enter_context(EmbeddedServices(data_dir, database="postgres"))
        server_url = server_url or services.postgres.dsn_for("postgres")
        redis_url = redis_url or services.redis_url
    assert server_url
    assert redis_url
    name = f"agentry_bench_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    stack.callback(
        lambda: asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    )
    database_url = _with_database(server_url, name)
    migrate_to_head(database_url)
    asyncio.run(_flush_redis(redis_url))
    return Services(database_url=database_url, redis_url=redis_url, embedded=embedded)
