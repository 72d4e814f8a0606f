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
    is_active: Mapped[bool] = mapped_column(default=True)
    # Soft delete: agents (terminated ones too) reference their type for history and usage.
    deleted_at: Mapped[datetime | None]
