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
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, IdMixin, TimestampMixin, check_in, utcnow


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    requires_action = "requires_action"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


FINISHED = frozenset(
    {RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.timed_out}
)


class Run(IdMixin, TimestampMixin, Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(check_in("status", RunStatus), name="status"),
        Index("ix_runs_project_id_created_at", "project_id", "created_at"),
        Index("ix_runs_agent_id_seq", "agent_id", "seq"),
        # Sweeper, reaper, claims and pending_runs look only at unfinished runs.
        Index(
            "ix_runs_unfinished",
            "agent_id",
            "status",
            postgresql_where=text("status IN ('queued', 'running', 'requires_action')"),
        ),
        # The reaper's expiry of required actions.
        Index(
            "ix_runs_action_expires_at",
            "action_expires_at",
            postgresql_where=text("status = 'requires_action'"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    # Submission order: an agent starts its runs by ascending seq.
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.queued)
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Claims so far (a resume after a required action is a claim too).
    attempt: Mapped[int] = mapped_column(default=0)
    # Transient-failure retries so far; the agent type's max_retries bounds them.
    retries: Mapped[int] = mapped_column(server_default="0")
    # Steps committed so far: the next step's index.
    steps: Mapped[int] = mapped_column(server_default="0")
    # While requires_action: {type, tool_calls: [{id, name, arguments}], expires_at}.
    required_action: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    action_expires_at: Mapped[datetime | None]
    provider: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    timeout_seconds: Mapped[int | None]
    run_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # Sums over the run's provider calls, updated in the same transaction as each call.
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    # True when any call's model had no known price: cost_usd is then a lower bound.
    cost_unknown: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class RunStep(IdMixin, Base):
    """A run's step (API.md "Tools"): a model call, or a tool call and its result. Written when
    it ends (an approved server call is written `running` by the approval, then ended by the
    worker). A model step's usage is the sum of its provider calls (same run and step)."""

    __tablename__ = "run_steps"
    __table_args__ = (
        CheckConstraint("kind IN ('model', 'tool')", name="kind"),
        CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="status"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int]
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int]
    # model steps
    provider: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # tool steps
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    executor: Mapped[str | None] = mapped_column(String(8))
    output: Mapped[str | None] = mapped_column(Text)
    is_error: Mapped[bool | None]
    approval: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ProviderCall(IdMixin, Base):
    """One provider call (a model step of an attempt, or a fallback within it), priced when it
    ended."""

    __tablename__ = "provider_calls"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[uuid.UUID] = mapped_column(index=True)
    agent_id: Mapped[uuid.UUID]
    attempt: Mapped[int]
    # The model step's index within the run (0 for runs before steps existed).
    step: Mapped[int] = mapped_column(server_default="0")
    provider: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    succeeded: Mapped[bool]
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    price_source: Mapped[str] = mapped_column(String(200))
    raw_usage: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class ConversationMessage(IdMixin, Base):
    """An agent's conversation history; its next run receives it."""

    __tablename__ = "conversation_messages"
    __table_args__ = (Index("ix_conversation_messages_agent_id_seq", "agent_id", "seq"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None]
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | tool
    content: Mapped[str] = mapped_column(Text)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)  # assistant
    tool_call_id: Mapped[str | None] = mapped_column(String(200))  # tool
    is_error: Mapped[bool] = mapped_column(server_default="false")  # tool
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


# A call is recorded once per (run, attempt, step, provider, model): never counted twice.
Index(
    "uq_provider_calls_run_attempt_step_model",
    ProviderCall.run_id,
    ProviderCall.attempt,
    ProviderCall.step,
    ProviderCall.provider,
    ProviderCall.model,
    unique=True,
)
Index("uq_run_steps_run_id_index", RunStep.run_id, RunStep.index, unique=True)
# Admin metrics: run durations over the last hour.
Index(
    "ix_runs_finished_at",
    Run.finished_at,
    postgresql_where=text("finished_at IS NOT NULL"),
)
