"""Agent types: templates superusers curate, soft-deleted so agents keep their history.

Delete versus spawn, race-free: delete locks the type row FOR UPDATE, then looks for
live agents; spawn reads the type FOR SHARE and inserts its agent while holding that
lock. Whichever comes second waits for the first to commit and then sees its effect
(READ COMMITTED re-reads the row, and the next statement sees the new agent), so a
deleted type never gets a live agent and a type with a live agent is never deleted.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import column, exists, select, table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agent_types import tools
from backend.agent_types.models import AgentType, ProviderName
from backend.agent_types.schemas import AgentTypeCreate, AgentTypeUpdate, FakeConfig
from backend.audit import service as audit
from backend.auth.dependencies import Principal
from backend.core.db import paginate, utcnow
from backend.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.core.schemas import PageParams
from backend.runs.providers import fake
from backend.runs.providers.base import ProviderError

# The agents that use a type (agents depend on agent types, not the other way round).
_agents = table("agents", column("agent_type_id"), column("status"))
_LIVE = AgentType.deleted_at.is_(None)


def check_config(provider: str, config: dict[str, Any]) -> None:
    """Validate the provider-specific `config` (only `fake` has a known schema): first what the
    provider itself reads (its messages name the wrong script turn), then the bounds and the
    unknown keys of the schema."""
    if provider != ProviderName.fake:
        return
    try:
        fake.FakeConfig.parse(config)
    except ProviderError as exc:
        detail = exc.message.removeprefix("fake provider: ")
        # "script[1].tool_calls[0].name must be …" -> config.script.1.tool_calls.0.name
        path = _PARSE_PATH.match(detail)
        field = "config." + re.sub(r"\[(\d+)\]", r".\1", path.group(1)) if path else "config"
        raise ValidationFailed(f"{field}: {detail}", field=field) from None
    try:
        FakeConfig.model_validate(config)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(["config", *(str(p) for p in e["loc"])]),
                "message": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        first = details[0]
        raise ValidationFailed(
            f"{first['field']}: {first['message']}", field=first["field"], details=details
        ) from None


_PARSE_PATH = re.compile(r"^([a-z_]+(?:\[\d+\]|\.[a-z_]+)*) ")


def _values(
    data: AgentTypeCreate | AgentTypeUpdate,
    fields: set[str],
    secret_key: str,
    stored_servers: list[dict[str, Any]],
) -> dict[str, Any]:
    values = {f: getattr(data, f) for f in fields - {"pricing", "tools", "mcp_servers"}}
    if "pricing" in fields:
        # Stored as decimal strings: exact, and what usage.pricing reads.
        values["pricing"] = (
            data.pricing.model_dump(mode="json", exclude_none=True) if data.pricing else None
        )
    if "tools" in fields:
        values["tools"] = [tool.model_dump(mode="json") for tool in data.tools]
    if "mcp_servers" in fields:
        values["mcp_servers"] = tools.store_servers(data.mcp_servers, stored_servers, secret_key)
    return values


async def _flush_unique(session: AsyncSession, slug: str) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(f"An agent type with slug '{slug}' already exists", field="slug") from None


async def create(
    session: AsyncSession, principal: Principal, data: AgentTypeCreate, secret_key: str
) -> AgentType:
    check_config(data.provider, data.config)
    values = _values(data, set(AgentTypeCreate.model_fields), secret_key, [])
    tools.check_names(values["tools"], values["mcp_servers"])
    agent_type = AgentType(**values)
    session.add(agent_type)
    await _flush_unique(session, data.slug)
    audit.record(
        session,
        principal,
        "agent_type.create",
        target_type="agent_type",
        target_id=agent_type.id,
        details={"slug": data.slug},
    )
    return agent_type


async def list_types(
    session: AsyncSession, principal: Principal, paging: PageParams, *, include_inactive: bool
) -> tuple[list[AgentType], int]:
    if include_inactive and not principal.user.is_superuser:
        raise Forbidden("Only superusers can list inactive agent types")
    where = [_LIVE] if include_inactive else [_LIVE, AgentType.is_active]
    query = (
        select(AgentType).where(*where).order_by(AgentType.created_at.desc(), AgentType.id.desc())
    )
    return await paginate(session, query, paging)


async def get(session: AsyncSession, principal: Principal, type_id: uuid.UUID) -> AgentType:
    agent_type = await session.scalar(select(AgentType).where(AgentType.id == type_id, _LIVE))
    # Inactive types are the superusers' business: hidden from everyone else.
    if agent_type is None or not (agent_type.is_active or principal.user.is_superuser):
        raise NotFound(f"Agent type {type_id} not found")
    return agent_type


async def _locked(session: AsyncSession, type_id: uuid.UUID) -> AgentType:
    agent_type = await session.scalar(
        select(AgentType).where(AgentType.id == type_id, _LIVE).with_for_update()
    )
    if agent_type is None:
        raise NotFound(f"Agent type {type_id} not found")
    return agent_type


async def update(
    session: AsyncSession,
    principal: Principal,
    type_id: uuid.UUID,
    data: AgentTypeUpdate,
    secret_key: str,
) -> AgentType:
    agent_type = await _locked(session, type_id)
    fields = data.model_fields_set
    if fields & {"provider", "config"}:
        check_config(data.provider or agent_type.provider, _pick(data.config, agent_type.config))
    values = _values(data, fields, secret_key, agent_type.mcp_servers)
    if fields & {"tools", "mcp_servers"}:
        tools.check_names(
            values.get("tools", agent_type.tools), values.get("mcp_servers", agent_type.mcp_servers)
        )
    for name, value in values.items():
        setattr(agent_type, name, value)
    agent_type.updated_at = utcnow()
    await _flush_unique(session, agent_type.slug)
    audit.record(
        session,
        principal,
        "agent_type.update",
        target_type="agent_type",
        target_id=agent_type.id,
        details={"fields": sorted(fields)},
    )
    return agent_type


def _pick(new: Any, old: Any) -> Any:
    return old if new is None else new


async def delete(session: AsyncSession, principal: Principal, type_id: uuid.UUID) -> None:
    agent_type = await _locked(session, type_id)
    in_use = await session.scalar(
        select(exists().where(_agents.c.agent_type_id == type_id, _agents.c.status != "terminated"))
    )
    if in_use:
        raise Conflict(
            "Agent type is used by agents that are not terminated; deactivate it instead"
        )
    agent_type.deleted_at = utcnow()
    audit.record(
        session,
        principal,
        "agent_type.delete",
        target_type="agent_type",
        target_id=agent_type.id,
        details={"slug": agent_type.slug},
    )
