from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, IdMixin, TimestampMixin, check_in, utcnow


class DeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class WebhookEndpoint(IdMixin, TimestampMixin, Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_project_id_created_at", "project_id", "created_at"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    # Event types or ["*"]; the outbox matches them with jsonb `?`.
    events: Mapped[list[str]] = mapped_column(JSONB)
    description: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(default=True)
    # Fernet tokens (key derived from SECRET_KEY): the secrets must sign, so they are not hashed.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]


class WebhookEvent(IdMixin, Base):
    """One row per committed change that has an event type (written by backend.webhooks.outbox
    in the change's statement or transaction). The id is the `webhook-id`."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_created_at", "created_at"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    # The agent or run (or project) whose events one endpoint receives in order.
    ordering_key: Mapped[uuid.UUID | None]
    # Total order of events; within one ordering key it is the order of the changes (they
    # serialize on the agent row, which every writer locks before writing an event).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    # Row snapshots ("agent", "run") rendered at delivery by the domains' serializers.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Events that happen at most once (budget.exhausted per project, month and limit).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class WebhookDelivery(IdMixin, Base):
    """An event to one endpoint: attempted until 2xx, 410 or the retry schedule's end."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(check_in("status", DeliveryStatus), name="status"),
        # An endpoint's deliveries, newest first (GET …/deliveries).
        Index("ix_webhook_deliveries_endpoint_id_seq", "endpoint_id", "seq"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
        # The delivery loop reads the pending rows only: each key's oldest is its head.
        Index(
            "ix_webhook_deliveries_pending_key",
            "endpoint_id",
            "ordering_key",
            "seq",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    ordering_key: Mapped[uuid.UUID | None]
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    # Due time while pending; during an attempt, the end of its lease (a worker that dies
    # mid-attempt leaves it to be taken again then).
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        server_default=func.now(), default=utcnow
    )
    last_response_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    delivered_at: Mapped[datetime | None]
