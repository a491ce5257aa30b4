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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, Timestamps, UUIDPk, enum_check
from shared.models.enums import JobStatus, JobType


class TrainingJob(UUIDPk, Timestamps, Base):
    """The record of a job's life. arq carries it; this row is the truth about it."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        enum_check("job_type", JobType),
        enum_check("status", JobStatus),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint("compute_seconds >= 0", name="compute_non_negative"),
        CheckConstraint("retries >= 0", name="retries_non_negative"),
        CheckConstraint("compute_limit_hours > 0", name="compute_limit_positive"),
        UniqueConstraint("project_id", "idempotency_key"),
        Index("ix_training_jobs_project_id_status", "project_id", "status"),
        Index("ix_training_jobs_status_heartbeat_at", "status", "heartbeat_at"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_type: Mapped[str] = mapped_column(String(32))
    dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), index=True
    )
    # The version an evaluate/export/index job works on, or the one a fine-tune starts from.
    input_model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT", use_alter=True), index=True
    )
    base_model: Mapped[str | None] = mapped_column(String(500))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.queued.value)
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("5"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # {step, total_steps, epoch, loss, pairs_per_s, eta_s, phase}
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    error: Mapped[str | None] = mapped_column(Text)
    # what an evaluate, export or index job found or wrote (fine-tunes register a model version instead)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # runs started (crashes resume)
    retries: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # times a person retried it
    # The most compute the job may use; reserved against the project's budget while it is queued/running.
    compute_limit_hours: Mapped[float] = mapped_column(Float, server_default=text("1"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    compute_seconds: Mapped[float] = mapped_column(Float, server_default=text("0"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
