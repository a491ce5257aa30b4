"""impressions: what inference served, and how long each project keeps them; events' own ids

Revision ID: 8c41f0e2b9d3
Revises: 5b8e1d2c4a70
Create Date: 2026-12-03 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "8c41f0e2b9d3"
down_revision: str | None = "5b8e1d2c4a70"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("event_id", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_events_project_id_event_id",
        "events",
        ["project_id", "event_id"],
        unique=True,
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.add_column(
        "projects",
        sa.Column("impression_retention_days", sa.Integer(), server_default=sa.text("90"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_projects_impression_retention_days_valid"),
        "projects",
        "impression_retention_days BETWEEN 1 AND 3650",
    )
    op.create_table(
        "impressions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=16), nullable=False),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column("reranker_version_id", sa.Uuid(), nullable=True),
        sa.Column("arm", sa.String(length=8), server_default="primary", nullable=False),
        sa.Column("query", sa.String(length=1000), nullable=True),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("product_ids", postgresql.ARRAY(sa.String(length=200)), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("arm IN ('primary', 'canary')", name=op.f("ck_impressions_arm_valid")),
        sa.CheckConstraint("endpoint IN ('recommend', 'rerank')", name=op.f("ck_impressions_endpoint_valid")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_impressions_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reranker_version_id"],
            ["model_versions.id"],
            name=op.f("fk_impressions_reranker_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_impressions_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
    )
    op.create_index(op.f("ix_impressions_model_version_id"), "impressions", ["model_version_id"], unique=False)
    op.create_index("ix_impressions_project_id_request_id", "impressions", ["project_id", "request_id"], unique=False)
    op.create_index("ix_impressions_project_id_served_at", "impressions", ["project_id", "served_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_impressions_project_id_served_at", table_name="impressions")
    op.drop_index("ix_impressions_project_id_request_id", table_name="impressions")
    op.drop_index(op.f("ix_impressions_model_version_id"), table_name="impressions")
    op.drop_table("impressions")
    op.drop_constraint(op.f("ck_projects_impression_retention_days_valid"), "projects", type_="check")
    op.drop_column("projects", "impression_retention_days")
    op.drop_index("uq_events_project_id_event_id", table_name="events", postgresql_where=sa.text("event_id IS NOT NULL"))
    op.drop_column("events", "event_id")
