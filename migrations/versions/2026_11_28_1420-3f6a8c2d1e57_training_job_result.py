"""training job result

Revision ID: 3f6a8c2d1e57
Revises: 9b1c5d2e7f40
Create Date: 2026-11-28 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


revision: str = '3f6a8c2d1e57'
down_revision: str | None = '9b1c5d2e7f40'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('training_jobs', sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('training_jobs', 'result')
