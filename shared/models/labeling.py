from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, Timestamps, UUIDPk, enum_check
from shared.models.enums import (
    AssignmentPolicy,
    AssignmentStatus,
    LabelingPool,
    LabelingStatus,
    LabelingStrategy,
)


class LabelingQueue(UUIDPk, Timestamps, Base):
    """(query, product) pairs for people to judge, chosen from a pool by a strategy; closing it writes the
    labels as a version of a relevance dataset."""

    __tablename__ = "labeling_queues"
    __table_args__ = (
        enum_check("status", LabelingStatus),
        enum_check("strategy", LabelingStrategy),
        enum_check("pool", LabelingPool),
        enum_check("assignment", AssignmentPolicy),
        CheckConstraint("budget >= 1", name="budget_positive"),
        CheckConstraint("labels_per_item BETWEEN 1 AND 5", name="labels_per_item_range"),
        CheckConstraint("min_grade >= 0 AND max_grade > min_grade", name="grade_scale_valid"),
        Index("ix_labeling_queues_project_id_status", "project_id", "status"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), server_default=LabelingStatus.building.value)
    strategy: Mapped[str] = mapped_column(String(16))
    pool: Mapped[str] = mapped_column(String(16))
    # the pool dataset version (pool=dataset), or the window of impressions (pool=impressions), and the
    # rest of what the selection job was asked (LabelingOptions)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    budget: Mapped[int] = mapped_column(Integer)
    labels_per_item: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    assignment: Mapped[str] = mapped_column(String(16), server_default=AssignmentPolicy.round_robin.value)
    labellers: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), server_default="{}")
    min_grade: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    max_grade: Mapped[int] = mapped_column(SmallInteger, server_default=text("3"))
    dataset_name: Mapped[str] = mapped_column(String(200))  # the relevance dataset closing writes to
    pool_dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL")
    )
    selection_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    # what the selection found (pool size, candidates, the models consulted); on close, the agreement
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    error: Mapped[str | None] = mapped_column(Text)
    dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL")
    )
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class LabelingItem(UUIDPk, Base):
    """One pair to judge, in the order the strategy ranked it (``position`` 1 first)."""

    __tablename__ = "labeling_items"
    __table_args__ = (
        UniqueConstraint("queue_id", "position"),
        UniqueConstraint("queue_id", "query", "product_id"),
    )

    queue_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("labeling_queues.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    query: Mapped[str] = mapped_column(String(1000))
    product_id: Mapped[str] = mapped_column(String(200))
    product_text: Mapped[str] = mapped_column(Text, server_default="")
    score: Mapped[float] = mapped_column(Float)  # the strategy's
    signals: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")  # each ranker's score


class LabelingAssignment(UUIDPk, CreatedAt, Base):
    """One labeller's judgment of one item: waiting, a grade, or a skip with its reason."""

    __tablename__ = "labeling_assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        enum_check("status", AssignmentStatus),
        CheckConstraint("(status = 'labelled') = (grade IS NOT NULL)", name="grade_when_labelled"),
        Index("ix_labeling_assignments_queue_id_user_id_status", "queue_id", "user_id", "status"),
        Index("ix_labeling_assignments_user_id_status", "user_id", "status"),
    )

    queue_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("labeling_queues.id", ondelete="CASCADE"))
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("labeling_items.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # the item's, so a labeller's next pair is one index read
    status: Mapped[str] = mapped_column(String(16), server_default=AssignmentStatus.pending.value)
    grade: Mapped[int | None] = mapped_column(SmallInteger)
    skip_reason: Mapped[str | None] = mapped_column(String(500))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
