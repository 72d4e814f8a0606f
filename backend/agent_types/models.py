from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Float, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, IdMixin, TimestampMixin, check_in


class ProviderName(StrEnum):
    anthropic = "anthropic"
    openai = "openai"
    fake = "fake"


class AgentType(IdMixin, TimestampMixin, Base):
    __tablename__ = "agent_types"
    __table_args__ = (
        CheckConstraint(check_in("provider", ProviderName), name="provider"),
        # Deleted types free their slug; terminated agents keep pointing at the deleted row.
        Index(
            "uq_agent_types_slug_live",
            "slug",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    temperature: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int | None]
    fallback_models: Mapped[list[str]] = mapped_column(JSONB, default=list)
    timeout_seconds: Mapped[int] = mapped_column(default=300)
    max_retries: Mapped[int] = mapped_column(default=3)
    # {input_per_mtok_usd, output_per_mtok_usd}: overrides the bundled price table.
    pricing: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Client tools [{name, description, input_schema}]: the caller executes them.
    tools: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    # MCP servers [{name, url, headers, allowed_tools, require_approval}]; each header value
    # is a Fernet token (backend/core/secrets.py): sent to the server, never returned.
    mcp_servers: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    max_steps: Mapped[int] = mapped_column(server_default="16")
    tool_timeout_seconds: Mapped[int] = mapped_column(server_default="60")
    action_timeout_seconds: Mapped[int] = mapped_column(server_default="3600")
    is_active: Mapped[bool] = mapped_column(default=True)
    # Soft delete: agents (terminated ones too) reference their type for history and usage.
    deleted_at: Mapped[datetime | None]
