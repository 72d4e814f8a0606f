from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Numeric,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, IdMixin, TimestampMixin, check_in, utcnow


class AgentStatus(StrEnum):
    idle = "idle"
    working = "working"
    waiting = "waiting"
    paused = "paused"
    terminated = "terminated"


class Agent(IdMixin, TimestampMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint(check_in("status", AgentStatus), name="status"),
        Index("ix_agents_project_id_created_at", "project_id", "created_at"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_type_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agent_types.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Written only by backend.agents.state.
    status: Mapped[str] = mapped_column(String(16), default=AgentStatus.idle)
    current_task: Mapped[str | None] = mapped_column(Text)
    short_term_memory: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    long_term_memory_ref: Mapped[str | None] = mapped_column(String(500))
    session_id: Mapped[str | None] = mapped_column(String(200))
    last_activity_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    tasks_completed: Mapped[int] = mapped_column(default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_incurred: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))


class AgentEvent(IdMixin, Base):
    """One row per status transition, written in the transition's transaction."""

    __tablename__ = "agent_events"
    __table_args__ = (Index("ix_agent_events_agent_id_created_at", "agent_id", "created_at"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor_user_id: Mapped[uuid.UUID | None]
    actor_api_key_id: Mapped[uuid.UUID | None]
    run_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    # Total order of transitions, even within one transaction (same now()).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
