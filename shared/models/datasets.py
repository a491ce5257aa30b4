from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, Timestamps, UUIDPk, enum_check
from shared.models.enums import DatasetKind, ImportStatus


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
    # where the rows came from when not from an upload: a feedback job's window and base version
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class DatasetImport(UUIDPk, CreatedAt, Base):
    """The report of one import attempt, kept whether it created a version, matched an existing one
    or was rejected (then ``errors`` holds the first errors and no version exists)."""

    __tablename__ = "dataset_imports"
    __table_args__ = (
        enum_check("status", ImportStatus),
        enum_check("kind", DatasetKind),
        CheckConstraint("error_count >= 0", name="error_count_non_negative"),
        Index("ix_dataset_imports_project_id_created_at", "project_id", "created_at"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), index=True
    )
    dataset_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")  # name, bytes, sha256
    size_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    encoding: Mapped[str | None] = mapped_column(String(32))
    content_hash: Mapped[str] = mapped_column(String(64))
    error_count: Mapped[int] = mapped_column(Integer, server_default="0")
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    warnings: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    duration_ms: Mapped[int] = mapped_column(Integer, server_default="0")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
