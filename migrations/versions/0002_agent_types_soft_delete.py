"""agent types: soft delete, slug unique among live types

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agent_types", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("uq_agent_types_slug"), "agent_types", type_="unique")
    op.create_index(
        "uq_agent_types_slug_live",
        "agent_types",
        ["slug"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    # Deleted types may share a slug with a live one: give them unique slugs first.
    op.execute("UPDATE agent_types SET slug = 'deleted-' || id::text WHERE deleted_at IS NOT NULL")
    op.drop_index(
        "uq_agent_types_slug_live",
        table_name="agent_types",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_unique_constraint(op.f("uq_agent_types_slug"), "agent_types", ["slug"])
    op.drop_column("agent_types", "deleted_at")
