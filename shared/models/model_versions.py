from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, UUIDPk, enum_check
from shared.models.enums import ModelStatus, ModelTaskType


class ModelVersion(UUIDPk, CreatedAt, Base):
    """A trained model with everything needed to trust and reproduce it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "version"),
        enum_check("task_type", ModelTaskType),
        enum_check("status", ModelStatus),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    task_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), server_default=ModelStatus.candidate.value)
    base_model: Mapped[str] = mapped_column(String(500))
    training_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True
    )
    dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), index=True
    )
    parent_model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # Task specifics the runtime needs: labels of a classifier, pooling, max_length.
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    baselines: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # {file name: {path, sha256, bytes, servable}}
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    git_commit: Mapped[str | None] = mapped_column(String(64))
    # the code that trained it: {commit, branch, remote (no credentials), dirty}
    git: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    duration_s: Mapped[float | None] = mapped_column(Float)
    compute: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
