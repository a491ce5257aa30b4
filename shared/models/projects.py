from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, Timestamps, UUIDPk, enum_check
from shared.models.enums import MilestoneStatus, ProjectRole, ProjectStatus


class Project(UUIDPk, Timestamps, Base):
    __tablename__ = "projects"
    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'", name="slug_format"),
        enum_check("status", ProjectStatus),
        CheckConstraint("goal_operator IN ('>=', '<=')", name="goal_operator_valid"),
        CheckConstraint(
            "target_date IS NULL OR start_date IS NULL OR target_date >= start_date",
            name="dates_ordered",
        ),
        CheckConstraint("budget_cpu_hours >= 0 AND budget_gpu_hours >= 0", name="budget_non_negative"),
        CheckConstraint("used_cpu_hours >= 0 AND used_gpu_hours >= 0", name="usage_non_negative"),
        CheckConstraint("max_concurrent_jobs >= 1", name="max_concurrent_jobs_positive"),
        CheckConstraint(
            "impression_retention_days BETWEEN 1 AND 3650", name="impression_retention_days_valid"
        ),
        CheckConstraint("exploration_percent BETWEEN 0 AND 50", name="exploration_percent_valid"),
    )

    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    status: Mapped[str] = mapped_column(String(16), server_default=ProjectStatus.proposed.value)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    goal_metric: Mapped[str | None] = mapped_column(String(64))
    goal_operator: Mapped[str] = mapped_column(String(2), server_default=">=")
    goal_value: Mapped[float | None] = mapped_column(Float)
    start_date: Mapped[date | None] = mapped_column(Date)
    target_date: Mapped[date | None] = mapped_column(Date)
    budget_cpu_hours: Mapped[float] = mapped_column(Float, server_default=text("0"))
    budget_gpu_hours: Mapped[float] = mapped_column(Float, server_default=text("0"))
    used_cpu_hours: Mapped[float] = mapped_column(Float, server_default=text("0"))
    used_gpu_hours: Mapped[float] = mapped_column(Float, server_default=text("0"))
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer, server_default=text("2"))
    # how long what inference served is kept (impressions); older rows are deleted in bounded batches
    impression_retention_days: Mapped[int] = mapped_column(Integer, server_default=text("90"))
    # the share of /recommend answers (percent) whose top k is shown in a random order, so that feedback
    # can tell a product's appeal from the appeal of its position
    exploration_percent: Mapped[float] = mapped_column(Float, server_default=text("0"))
    # the number the project's latest task got (a trigger on tasks counts up under this row's lock)
    task_counter: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (enum_check("role", ProjectRole),)

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Milestone(UUIDPk, Timestamps, Base):
    __tablename__ = "milestones"
    __table_args__ = (
        UniqueConstraint("project_id", "title"),
        enum_check("status", MilestoneStatus),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    due_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), server_default=MilestoneStatus.open.value)
