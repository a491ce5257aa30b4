"""feedback: feedback jobs, dataset versions' lineage, exploration of the ranking

Revision ID: 4d7a9e3c1b62
Revises: 8c41f0e2b9d3
Create Date: 2026-12-03 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "4d7a9e3c1b62"
down_revision: str | None = "8c41f0e2b9d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_JOB_TYPES = "'bi_encoder', 'cross_encoder', 'classifier', 'evaluate', 'export', 'index'"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", type_="check")
    op.create_check_constraint(
        op.f("ck_training_jobs_job_type_valid"), "training_jobs", f"job_type IN ({_OLD_JOB_TYPES}, 'feedback')"
    )
    op.add_column(
        "dataset_versions",
        sa.Column("lineage", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
    )
    op.add_column("projects", sa.Column("exploration_percent", sa.Float(), server_default=sa.text("0"), nullable=False))
    op.create_check_constraint(
        op.f("ck_projects_exploration_percent_valid"), "projects", "exploration_percent BETWEEN 0 AND 50"
    )
    op.add_column("impressions", sa.Column("explored", sa.Boolean(), server_default=sa.text("false"), nullable=False))


def downgrade() -> None:
    op.drop_column("impressions", "explored")
    op.drop_constraint(op.f("ck_projects_exploration_percent_valid"), "projects", type_="check")
    op.drop_column("projects", "exploration_percent")
    op.drop_column("dataset_versions", "lineage")
    op.execute("DELETE FROM training_jobs WHERE job_type = 'feedback'")
    op.drop_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", type_="check")
    op.create_check_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", f"job_type IN ({_OLD_JOB_TYPES})")
