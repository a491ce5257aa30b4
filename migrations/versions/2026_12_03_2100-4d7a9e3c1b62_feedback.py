"""feedback: feedback jobs, dataset versions' lineage, exploration of the ranking, online rollups

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
    op.create_table(
        "online_rollups",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("impressions", sa.BigInteger(), nullable=False),
        sa.Column("clicks", sa.BigInteger(), nullable=False),
        sa.Column("carts", sa.BigInteger(), nullable=False),
        sa.Column("purchases", sa.BigInteger(), nullable=False),
        sa.Column("zero_click", sa.BigInteger(), nullable=False),
        sa.Column("reciprocal_rank", sa.Float(), nullable=False),
        sa.Column("clicks_by_rank", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("latency_histogram", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.CheckConstraint("role IN ('retriever', 'reranker')", name=op.f("ck_online_rollups_role_valid")),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"],
            name=op.f("fk_online_rollups_model_version_id_model_versions"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_online_rollups_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_online_rollups")),
        sa.UniqueConstraint(
            "project_id", "role", "hour", "model_version_id",
            name=op.f("uq_online_rollups_project_id_role_hour_model_version_id"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(op.f("ix_online_rollups_model_version_id"), "online_rollups", ["model_version_id"], unique=False)
    op.create_table(
        "online_rollup_hours",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_online_rollup_hours_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "hour", name=op.f("pk_online_rollup_hours")),
    )


def downgrade() -> None:
    op.drop_table("online_rollup_hours")
    op.drop_index(op.f("ix_online_rollups_model_version_id"), table_name="online_rollups")
    op.drop_table("online_rollups")
    op.drop_column("impressions", "explored")
    op.drop_constraint(op.f("ck_projects_exploration_percent_valid"), "projects", type_="check")
    op.drop_column("projects", "exploration_percent")
    op.drop_column("dataset_versions", "lineage")
    op.execute("DELETE FROM training_jobs WHERE job_type = 'feedback'")
    op.drop_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", type_="check")
    op.create_check_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", f"job_type IN ({_OLD_JOB_TYPES})")
