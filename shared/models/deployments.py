from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, UUIDPk, enum_check
from shared.models.enums import DeploymentRole, RuleAction


class Deployment(UUIDPk, CreatedAt, Base):
    """Which model version serves a project's role. Rows are never rewritten in place: a promotion
    deactivates the active row and inserts a new one, so the table is the deployment history."""

    __tablename__ = "deployments"
    __table_args__ = (
        enum_check("role", DeploymentRole),
        CheckConstraint("canary_percent BETWEEN 0 AND 100", name="canary_percent_range"),
        CheckConstraint(
            "canary_model_version_id IS NOT NULL OR canary_percent = 0", name="canary_needs_version"
        ),
        Index(
            "uq_deployments_active_project_role",
            "project_id",
            "role",
            unique=True,
            postgresql_where=text("is_active"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    canary_model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT")
    )
    canary_percent: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MerchandisingRule(UUIDPk, CreatedAt, Base):
    """A business rule /recommend applies after ranking: pin, boost, bury or hide products (by id or
    category), for one query or for every request."""

    __tablename__ = "merchandising_rules"
    __table_args__ = (
        enum_check("action", RuleAction),
        CheckConstraint("position IS NULL OR position >= 1", name="position_positive"),
        CheckConstraint("weight IS NULL OR weight > 0", name="weight_positive"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    query: Mapped[str | None] = mapped_column(String(1000))  # lowercased; None: every request
    product_id: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(500))
    position: Mapped[int | None] = mapped_column(SmallInteger)
    weight: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String(500), server_default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
