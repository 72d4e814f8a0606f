"""Bench fixtures written straight to the database: a user with a JWT, projects, fake agent
types and agents. Core INSERTs on the ORM tables, so Python-side column defaults apply."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.agent_types.models import AgentType
from backend.agents.models import Agent
from backend.auth.models import User
from backend.core.security import create_access_token
from backend.projects.models import Project, ProjectMember, Role

FAKE_MODEL = "fake-echo"  # the model backend/agent_types/seed.py gives the fake types


@dataclass(frozen=True)
class Owner:
    user_id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def create_owner(engine: AsyncEngine, *, secret: str, algorithm: str = "HS256") -> Owner:
    user_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(User).values(
                id=user_id,
                email=f"bench-{user_id.hex[:12]}@example.com",
                hashed_password="!bench-user-cannot-log-in",
                full_name="Bench owner",
            )
        )
    # Long enough for the whole bench; the server checks signature, expiry and token_version.
    token = create_access_token(
        user_id=user_id, token_version=0, secret=secret, algorithm=algorithm, minutes=24 * 60
    )
    return Owner(user_id, token)


async def create_project(engine: AsyncEngine, owner: Owner, name: str) -> uuid.UUID:
    project_id = uuid.uuid4()
    slug = f"{name}-{project_id.hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            insert(Project).values(id=project_id, name=name, slug=slug, owner_id=owner.user_id)
        )
        await conn.execute(
            insert(ProjectMember).values(
                project_id=project_id, user_id=owner.user_id, role=Role.owner.value
            )
        )
    return project_id


async def create_fake_type(
    engine: AsyncEngine, slug: str, config: dict[str, Any], **columns: Any
) -> uuid.UUID:
    """A `fake` agent type; `columns` sets others (tools, mcp_servers, max_steps, …) as stored."""
    type_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(AgentType).values(
                id=type_id,
                name=f"Bench {slug}",
                slug=f"{slug}-{type_id.hex[:8]}",
                provider="fake",
                model=FAKE_MODEL,
                system_prompt="You are a bench echo.",
                config=config,
                **columns,
            )
        )
    return type_id


async def create_agents(
    engine: AsyncEngine, project_id: uuid.UUID, type_id: uuid.UUID, count: int, prefix: str
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    rows = [
        {"id": i, "project_id": project_id, "agent_type_id": type_id, "name": f"{prefix}-{n}"}
        for n, i in enumerate(ids)
    ]
    async with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(insert(Agent), rows[start : start + 5000])
    return ids


async def analyze(engine: AsyncEngine, *tables: str) -> None:
    """Fresh planner statistics, as autovacuum would have them on a live database."""
    async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        for table in tables:
            await conn.execute(text(f"VACUUM ANALYZE {table}"))
