from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, Timestamps, UUIDPk, enum_check
from shared.models.enums import DatasetKind


class Dataset(UUIDPk, Timestamps, Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"), enum_check("kind", DatasetKind))

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, server_default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class DatasetVersion(UUIDPk, CreatedAt, Base):
    """An immutable, validated snapshot of a dataset, identified by the hash of its content."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "content_hash"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("row_count >= 0", name="row_count_non_negative"),
    )

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    source_filename: Mapped[str | None] = mapped_column(String(500))
    encoding: Mapped[str | None] = mapped_column(String(32))
    storage_path: Mapped[str] = mapped_column(String(1000))
    # {table name: {path, rows, sha256, columns}}: a Home Depot file yields "catalog" and "relevance".
    tables: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    row_count: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    splits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    split_seed: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
