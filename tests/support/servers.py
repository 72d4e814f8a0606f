"""Where the test Postgres and Redis come from, and per-session databases on them."""

from __future__ import annotations

import asyncio
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServerUrls:
    postgres: str  # URL of the maintenance database (postgres) on the server
    redis: str


def _asyncpg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
        "postgres://", "postgresql+asyncpg://", 1
    )


def provide(stack: ExitStack, tmp: Path) -> ServerUrls:
    pg, redis = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    if pg and redis:
        return ServerUrls(_asyncpg(pg), redis)
    try:
        from backend.core.devservices import EmbeddedServices

        services = stack.enter_context(EmbeddedServices(tmp, redis_port=0))
        return ServerUrls(
            _asyncpg(pg) if pg else services.postgres.dsn_for("postgres"),
            redis or services.redis_url,
        )
    except Exception:
        if not _docker_answers():
            raise
        return _containers(stack, pg, redis)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # noqa: BLE001 - no engine is an answer too
        return False


def _containers(stack: ExitStack, pg: str | None, redis: str | None) -> ServerUrls:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    if not pg:
        container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver="asyncpg"))
        pg = container.get_connection_url()
    if not redis:
        rc = stack.enter_context(RedisContainer("redis:7-alpine"))
        redis = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
    return ServerUrls(_asyncpg(pg), redis)


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def create_database(server_url: str, name: str) -> str:
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)
