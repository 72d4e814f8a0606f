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
from sqlalchemy.dialects.postgresql import JSON, JSONB
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
    in the change's statement or transaction). The id is the `webhook-id`.

    The row is all the change's statement writes (one heap row, two small index entries: the
    run pipeline pays little); the delivery loop fans it out to the endpoints later
    (`fanned_out`). No foreign key: a key-share lock on the project row by every run's claim
    and conclusion would cost more than the check is worth (projects are never deleted)."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        # Retention and the backlog's age: rows arrive in created_at order, a BRIN index
        # costs nothing per insert.
        Index("ix_webhook_events_created_at", "created_at", postgresql_using="brin"),
        # What the delivery loop has yet to fan out (a handful of rows at any time).
        Index("ix_webhook_events_unfanned", "seq", postgresql_where=text("NOT fanned_out")),
        Index(
            "uq_webhook_events_dedupe_key",
            "dedupe_key",
            unique=True,
            postgresql_where=text("dedupe_key IS NOT NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID]
    type: Mapped[str] = mapped_column(String(64))
    # The agent or run (or project) whose events one endpoint receives in order.
    ordering_key: Mapped[uuid.UUID | None]
    # Total order of events; within one ordering key it is the order of the changes (they
    # serialize on the agent row, which every writer locks before writing an event).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    # Row snapshots ("agent", "run") rendered at delivery by the domains' serializers. `json`
    # (text), not `jsonb`: written by every transition, read once or twice.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Events that happen at most once (budget.exhausted per project, month and limit).
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    # Set once the delivery loop has written the event's deliveries.
    fanned_out: Mapped[bool] = mapped_column(default=False, server_default=text("false"))


class WebhookDelivery(IdMixin, Base):
    """An event to one endpoint: attempted until 2xx, 410 or the retry schedule's end."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(check_in("status", DeliveryStatus), name="status"),
        # An endpoint's deliveries, newest first (GET …/deliveries).
        Index("ix_webhook_deliveries_endpoint_id_seq", "endpoint_id", "seq"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
        # Pending rows by key: fan-out and promotion find a key's head and its next.
        Index(
            "ix_webhook_deliveries_pending_key",
            "endpoint_id",
            "ordering_key",
            "seq",
            postgresql_where=text("status = 'pending'"),
        ),
        # Each endpoint's heads (the delivery loop's take reads the range up to now: leased
        # and retrying ones are later; waiting rows, NULL, are not in it).
        Index(
            "ix_webhook_deliveries_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending' AND next_attempt_at IS NOT NULL"),
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
    # mid-attempt leaves it to be taken again then). NULL while it waits behind an earlier
    # pending delivery of its (endpoint, ordering key): only a key's head is ever due.
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        server_default=func.now(), default=utcnow
    )
    last_response_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    delivered_at: Mapped[datetime | None]
