"""Offline `fake` agent types for `agentry dev`, so the platform can be tried without API keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agent_types.models import AgentType, ProviderName

FAKE_TYPES: list[dict[str, Any]] = [
    {
        "slug": "echo",
        "name": "Echo",
        "description": "Answers 'echo: <input>' at once. Offline, free.",
        "config": {},
    },
    {
        "slug": "slow-echo",
        "name": "Slow echo",
        "description": "Like echo, after one second: watch runs stream and queue.",
        "config": {"latency_ms": 1000, "chunks": 8},
    },
    {
        "slug": "flaky-echo",
        "name": "Flaky echo",
        "description": "Fails transiently on the first two attempts of each run, then answers.",
        "config": {"fail_times": 2},
    },
]


async def seed_fake_types(session: AsyncSession) -> int:
    """Create the missing fake types (matched by slug among live types); returns how many.

    Flushes, never commits: the caller owns the transaction.
    """
    created = 0
    for spec in FAKE_TYPES:
        stmt = (
            insert(AgentType)
            .values(
                provider=ProviderName.fake.value,
                model="fake-echo",
                system_prompt="You are a helpful echo.",
                **spec,
            )
            .on_conflict_do_nothing(
                index_elements=["slug"], index_where=AgentType.deleted_at.is_(None)
            )
            .returning(AgentType.id)
        )
        created += (await session.scalar(stmt)) is not None
    return created
