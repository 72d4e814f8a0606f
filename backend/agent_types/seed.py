"""Offline `fake` agent types for `agentry dev`, so the platform can be tried without API keys;
with the demo MCP server's URL, `tool-demo`, whose runs call one of its tools and one client
tool (README, "Tools in the first minute")."""

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


LOOKUP_TOOL = {
    "name": "lookup",
    "description": "Look something up; the caller answers with POST …/tool-outputs",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}


def tool_demo(mcp_url: str) -> dict[str, Any]:
    return {
        "slug": "tool-demo",
        "name": "Tool demo",
        "description": "Counts words with the demo MCP server's word_count, then asks the"
        " caller's `lookup` tool, then echoes its answer. Offline, free.",
        "config": {
            "script": [
                {
                    "tool_calls": [
                        {"name": "demo__word_count", "arguments": {"text": "to be or not"}}
                    ]
                },
                {"tool_calls": [{"name": "lookup", "arguments": {"query": "weather in Paris"}}]},
            ]
        },
        "tools": [LOOKUP_TOOL],
        "mcp_servers": [
            {
                "name": "demo",
                "url": mcp_url,
                "headers": {},
                "allowed_tools": None,
                "require_approval": "never",
            }
        ],
    }


async def seed_fake_types(session: AsyncSession, *, demo_mcp_url: str | None = None) -> int:
    """Create the missing fake types (matched by slug among live types); returns how many.
    The demo MCP server's port changes with every start: `tool-demo` follows it.

    Flushes, never commits: the caller owns the transaction.
    """
    created = 0
    specs = [*FAKE_TYPES, *([tool_demo(demo_mcp_url)] if demo_mcp_url else [])]
    for spec in specs:
        stmt = insert(AgentType).values(
            provider=ProviderName.fake.value,
            model="fake-echo",
            system_prompt="You are a helpful echo.",
            **spec,
        )
        live = AgentType.deleted_at.is_(None)
        if "mcp_servers" in spec:
            stmt = stmt.on_conflict_do_update(
                index_elements=["slug"],
                index_where=live,
                set_={"mcp_servers": stmt.excluded.mcp_servers},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["slug"], index_where=live)
        created += (await session.scalar(stmt.returning(AgentType.id))) is not None
    return created
