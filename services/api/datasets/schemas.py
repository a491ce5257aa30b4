from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.datasets.formats import DataFormat
from shared.models.enums import DatasetKind, ImportStatus


class ImportForm(BaseModel):
    """The multipart fields beside the file(s)."""

    model_config = ConfigDict(extra="forbid")

    format: DataFormat | None = Field(
        None,
        description="csv, jsonl, parquet, or a public format (homedepot, esci, wands, unisrec). "
        "Default: from the file name.",
    )
    kind: DatasetKind | None = Field(None, description="Required for csv, jsonl and parquet.")
    encoding: str | None = Field(
        None, max_length=32, description="Text encoding of CSV files; default: detected."
    )
    name: str | None = Field(
        None, min_length=1, max_length=200, description="Dataset name; a new version is added when it exists."
    )
    description: str = Field("", max_length=2000)
    split_seed: int = Field(42, ge=0, le=2**31 - 1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    locale: str = Field("us", min_length=2, max_length=8, description="ESCI only: the product locale.")

    @model_validator(mode="after")
    def _fractions(self) -> ImportForm:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        return self


class ImportResult(BaseModel):
    id: uuid.UUID = Field(description="The dataset's id.")
    version_id: uuid.UUID
    version: int
    created: bool = Field(description="false: identical content was imported before; this is that version.")
    import_id: uuid.UUID
    name: str
    kind: DatasetKind
    format: DataFormat
    encoding: str | None
    rows: int = Field(description="Rows of the dataset's own kind (judgments, sequences, ...).")
    tables: dict[str, int] = Field(description="Rows per stored table, e.g. catalog and relevance.")
    items: int | None = Field(description="Distinct products in the catalog table, if any.")
    users: int | None
    queries: int | None
    splits: dict[str, Any]
    warnings: list[str]
    duration_ms: int


class VersionSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    version: int
    row_count: int
    created_at: dt.datetime


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    kind: DatasetKind
    format: str
    description: str
    created_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version_count: int = 0
    latest_version: VersionSummary | None = None


class TableInfo(BaseModel):
    path: str = Field(description="Relative to the data directory every service shares.")
    rows: int
    bytes: int
    sha256: str
    columns: list[str]


class DatasetVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID
    version: int
    content_hash: str
    format: str
    source_filename: str | None
    encoding: str | None
    storage_path: str
    tables: dict[str, TableInfo]
    row_count: int
    splits: dict[str, Any]
    split_seed: int | None
    lineage: dict[str, Any] = Field(
        description="Where the rows came from when not from an upload: a feedback job's id, window "
        "(from, to), base version and the impressions and events it read. Empty for imports."
    )
    created_by: uuid.UUID | None
    created_at: dt.datetime


class StatsRead(BaseModel):
    version_id: uuid.UUID
    rows: int
    stats: dict[str, Any]
    splits: dict[str, Any]


class RowErrorRead(BaseModel):
    file: str
    row: int | None = Field(
        description="1-based data row; row 1 is the line after the header. null: whole file."
    )
    column: str | None
    reason: str
    value: str | None = None


class ImportReport(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    dataset_id: uuid.UUID | None
    dataset_version_id: uuid.UUID | None
    dataset_name: str
    status: ImportStatus
    kind: DatasetKind
    format: str
    files: list[dict[str, Any]]
    size_bytes: int
    encoding: str | None
    content_hash: str
    error_count: int = Field(description="All errors found; `errors` lists the first 100.")
    errors: list[RowErrorRead]
    warnings: list[str]
    duration_ms: int
    created_by: uuid.UUID | None
    created_at: dt.datetime


class JobRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    job_type: str
    status: str
    created_at: dt.datetime


class ModelVersionRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    version: int
    task_type: str
    status: str
    training_job_id: uuid.UUID | None
    created_at: dt.datetime


class LineageRead(BaseModel):
    version_id: uuid.UUID
    training_jobs: list[JobRef]
    model_versions: list[ModelVersionRef]
