"""tools, steps and required actions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 06:23:19.327312
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("tool_calls", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("tool_call_id", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("arguments", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("executor", sa.String(length=8), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=True),
        sa.Column("approval", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint("kind IN ('model', 'tool')", name=op.f("ck_run_steps_kind")),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_run_steps_status")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_steps_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_steps")),
    )
    op.create_index("uq_run_steps_run_id_index", "run_steps", ["run_id", "index"], unique=True)
    op.add_column(
        "agent_types",
        sa.Column(
            "tools", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
    )
    op.add_column(
        "agent_types",
        sa.Column(
            "mcp_servers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
    )
    op.add_column(
        "agent_types", sa.Column("max_steps", sa.Integer(), server_default="16", nullable=False)
    )
    op.add_column(
        "agent_types",
        sa.Column("tool_timeout_seconds", sa.Integer(), server_default="60", nullable=False),
    )
    op.add_column(
        "agent_types",
        sa.Column("action_timeout_seconds", sa.Integer(), server_default="3600", nullable=False),
    )
    op.add_column(
        "conversation_messages",
        sa.Column("tool_calls", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "conversation_messages", sa.Column("tool_call_id", sa.String(length=200), nullable=True)
    )
    op.add_column(
        "conversation_messages",
        sa.Column("is_error", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column(
        "provider_calls", sa.Column("step", sa.Integer(), server_default="0", nullable=False)
    )
    op.drop_index(op.f("uq_provider_calls_run_attempt_model"), table_name="provider_calls")
    op.create_index(
        "uq_provider_calls_run_attempt_step_model",
        "provider_calls",
        ["run_id", "attempt", "step", "provider", "model"],
        unique=True,
    )
    op.add_column("runs", sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
    op.add_column("runs", sa.Column("steps", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "runs", sa.Column("required_action", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.add_column("runs", sa.Column("action_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_runs_action_expires_at",
        "runs",
        ["action_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'requires_action'"),
    )
    _statuses(_STATUSES + ("requires_action",), "'queued', 'running', 'requires_action'")


# Not found by autogenerate: the status check and the unfinished-runs index's predicate.
_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


def _statuses(statuses: tuple[str, ...], unfinished: str) -> None:
    op.drop_constraint(op.f("ck_runs_status"), "runs", type_="check")
    listed = ", ".join(f"'{s}'" for s in statuses)
    op.create_check_constraint("status", "runs", f"status IN ({listed})")
    op.drop_index("ix_runs_unfinished", table_name="runs")
    op.create_index(
        "ix_runs_unfinished",
        "runs",
        ["agent_id", "status"],
        postgresql_where=sa.text(f"status IN ({unfinished})"),
    )


def downgrade() -> None:
    # Runs waiting for an action cannot be represented before this revision: they end.
    op.execute(
        "UPDATE runs SET status = 'cancelled', finished_at = now(), required_action = NULL"
        " WHERE status = 'requires_action'"
    )
    _statuses(_STATUSES, "'queued', 'running'")
    op.drop_index(
        "ix_runs_action_expires_at",
        table_name="runs",
        postgresql_where=sa.text("status = 'requires_action'"),
    )
    op.drop_column("runs", "action_expires_at")
    op.drop_column("runs", "required_action")
    op.drop_column("runs", "steps")
    op.drop_column("runs", "retries")
    op.drop_index("uq_provider_calls_run_attempt_step_model", table_name="provider_calls")
    op.create_index(
        op.f("uq_provider_calls_run_attempt_model"),
        "provider_calls",
        ["run_id", "attempt", "provider", "model"],
        unique=True,
    )
    op.drop_column("provider_calls", "step")
    op.drop_column("conversation_messages", "is_error")
    op.drop_column("conversation_messages", "tool_call_id")
    op.drop_column("conversation_messages", "tool_calls")
    op.drop_column("agent_types", "action_timeout_seconds")
    op.drop_column("agent_types", "tool_timeout_seconds")
    op.drop_column("agent_types", "max_steps")
    op.drop_column("agent_types", "mcp_servers")
    op.drop_column("agent_types", "tools")
    op.drop_index("uq_run_steps_run_id_index", table_name="run_steps")
    op.drop_table("run_steps")
