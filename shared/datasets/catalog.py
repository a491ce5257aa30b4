"""Where a project's catalog lives: the newest dataset version that holds a catalog table.

The trainer and the inference service call these to read products straight from the Parquet store."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings
from shared.datasets.storage import read_table
from shared.models import Dataset, DatasetVersion


async def latest_catalog_version(session: AsyncSession, project_id: uuid.UUID) -> DatasetVersion | None:
    query = (
        select(DatasetVersion)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.project_id == project_id, DatasetVersion.tables.has_key("catalog"))
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


def read_catalog(settings: Settings, version: DatasetVersion, columns: list[str] | None = None) -> pa.Table:
    """The catalog table of ``version`` (blocking: call it from a worker thread in async code)."""
    return read_table(settings.data_dir, version.tables, "catalog", columns=columns)


def product_ids(settings: Settings, version: DatasetVersion) -> pa.Array:
    ids = read_catalog(settings, version, ["product_id"])["product_id"].combine_chunks()
    return pc.unique(ids)
