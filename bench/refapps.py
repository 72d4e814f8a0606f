"""The two reference apps of DESIGN.md "Performance targets", served like Agentry.

- `constant_app()`: a FastAPI route returning a constant: the framework ceiling.
- `pk_read_app(dsn, pool_size)`: a FastAPI route doing one primary-key read of an agent row
  with raw asyncpg from a pool: the database ceiling (same Postgres, same table as Agentry).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException, Request

_AGENT_BY_ID = (
    "SELECT id, project_id, agent_type_id, name, status, current_task, created_at, updated_at "
    "FROM agents WHERE id = $1"
)


def constant_app() -> FastAPI:
    app = FastAPI()

    @app.get("/constant")
    async def constant() -> dict[str, str]:
        return {"status": "ok"}

    return app


def pk_read_app(dsn: str, pool_size: int) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/agents/{agent_id}")
    async def get_agent(agent_id: uuid.UUID, request: Request) -> dict[str, object]:
        row = await request.app.state.pool.fetchrow(_AGENT_BY_ID, agent_id)
        if row is None:
            raise HTTPException(404)
        return dict(row)

    return app
