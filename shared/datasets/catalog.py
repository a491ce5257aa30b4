"""Where a project's catalog lives: the newest dataset version that holds a catalog table.

The trainer and the inference service call these to read products straight from the Parquet store."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings
from shared.datasets.storage import read_table
from shared.models import Dataset, DatasetVersion
from shared.storage import ObjectStore, object_store


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
    return read_table(object_store(settings), version.tables, "catalog", columns=columns)


def product_ids(settings: Settings, version: DatasetVersion) -> pa.Array:
    ids = read_catalog(settings, version, ["product_id"])["product_id"].combine_chunks()
    return pc.unique(ids)


def catalog_text(store: ObjectStore, tables: dict[str, Any]) -> dict[str, str]:
    """Product id -> the text models see: the title, led by the brand when the title lacks it."""
    catalog = read_table(store, tables, "catalog", columns=["product_id", "title", "brand"])
    ids = catalog["product_id"].to_pylist()
    titles = catalog["title"].to_pylist()
    brands = catalog["brand"].to_pylist()
    return {
        pid: f"{brand} {title}" if brand and brand.lower() not in title.lower() else title
        for pid, title, brand in zip(ids, titles, brands, strict=True)
    }


HISTORY_ITEMS = 3  # the most recent items that make a user's query text


def history_text(history: list[str], products: dict[str, str]) -> str:
    """A user as a bi-encoder reads them: the texts of their latest items, newest first."""
    recent = [products[p] for p in reversed(history[-HISTORY_ITEMS:]) if p in products]
    return " | ".join(recent)
