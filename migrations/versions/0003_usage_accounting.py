"""usage accounting: rollup call counts, idempotent provider calls, run finish index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'usage_rollups',
        sa.Column('calls', sa.Integer(), server_default=sa.text('0'), nullable=False),
    )
    op.create_index(
        'uq_provider_calls_run_attempt_model',
        'provider_calls',
        ['run_id', 'attempt', 'provider', 'model'],
        unique=True,
    )
    op.create_index(
        'ix_runs_finished_at',
        'runs',
        ['finished_at'],
        unique=False,
        postgresql_where=sa.text('finished_at IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index(
        'ix_runs_finished_at', table_name='runs', postgresql_where=sa.text('finished_at IS NOT NULL')
    )
    op.drop_index('uq_provider_calls_run_attempt_model', table_name='provider_calls')
    op.drop_column('usage_rollups', 'calls')
