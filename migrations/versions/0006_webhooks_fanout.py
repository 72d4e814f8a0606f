"""webhooks: one compact event row per change, fanned out to endpoints by the delivery loop

The change's statement writes only the event (json payload, no foreign key, a BRIN index on
created_at, a partial index of the events not yet fanned out); deliveries are written by the
delivery loop, and only a key's head delivery is due (the others wait with next_attempt_at
NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing event has its deliveries already: fanned out (a fast default for them).
    op.add_column(
        "webhook_events",
        sa.Column("fanned_out", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.alter_column("webhook_events", "fanned_out", server_default=sa.text("false"))
    op.drop_constraint(
        op.f("fk_webhook_events_project_id_projects"), "webhook_events", type_="foreignkey"
    )
    op.alter_column(
        "webhook_events",
        "payload",
        type_=postgresql.JSON(astext_type=sa.Text()),
        existing_type=postgresql.JSONB(astext_type=sa.Text()),
        postgresql_using="payload::json",
    )
    op.drop_constraint(op.f("uq_webhook_events_dedupe_key"), "webhook_events", type_="unique")
    op.create_index(
        "uq_webhook_events_dedupe_key",
        "webhook_events",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )
    op.drop_index("ix_webhook_events_created_at", table_name="webhook_events")
    op.create_index(
        "ix_webhook_events_created_at", "webhook_events", ["created_at"], postgresql_using="brin"
    )
    op.create_index(
        "ix_webhook_events_unfanned",
        "webhook_events",
        ["seq"],
        postgresql_where=sa.text("NOT fanned_out"),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending' AND next_attempt_at IS NOT NULL"),
    )
    # Pending deliveries behind an older pending one of their key now wait for it.
    op.execute(
        """UPDATE webhook_deliveries d SET next_attempt_at = NULL
        WHERE d.status = 'pending' AND d.ordering_key IS NOT NULL AND EXISTS (
            SELECT FROM webhook_deliveries o WHERE o.endpoint_id = d.endpoint_id
                AND o.ordering_key = d.ordering_key AND o.status = 'pending' AND o.seq < d.seq)"""
    )


def downgrade() -> None:
    # The old code computes heads itself and expects every event fanned out.
    op.execute(
        """UPDATE webhook_deliveries SET next_attempt_at = created_at
        WHERE status = 'pending' AND next_attempt_at IS NULL"""
    )
    op.execute(
        """INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering_key, seq, status,
            attempts, next_attempt_at, created_at)
        SELECT gen_random_uuid(), e.id, w.id, e.ordering_key, e.seq, 'pending', 0, e.created_at,
            e.created_at
        FROM webhook_events e JOIN webhook_endpoints w ON w.project_id = e.project_id
            AND w.enabled AND (w.events ? e.type OR w.events ? '*')
        WHERE NOT e.fanned_out"""
    )
    op.drop_index(
        "ix_webhook_deliveries_due",
        table_name="webhook_deliveries",
        postgresql_where=sa.text("status = 'pending' AND next_attempt_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_webhook_events_unfanned",
        table_name="webhook_events",
        postgresql_where=sa.text("NOT fanned_out"),
    )
    op.drop_index(
        "ix_webhook_events_created_at", table_name="webhook_events", postgresql_using="brin"
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.drop_index(
        "uq_webhook_events_dedupe_key",
        table_name="webhook_events",
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )
    op.create_unique_constraint(
        op.f("uq_webhook_events_dedupe_key"), "webhook_events", ["dedupe_key"]
    )
    op.alter_column(
        "webhook_events",
        "payload",
        type_=postgresql.JSONB(astext_type=sa.Text()),
        existing_type=postgresql.JSON(astext_type=sa.Text()),
        postgresql_using="payload::jsonb",
    )
    op.create_foreign_key(
        op.f("fk_webhook_events_project_id_projects"),
        "webhook_events",
        "projects",
        ["project_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_column("webhook_events", "fanned_out")
