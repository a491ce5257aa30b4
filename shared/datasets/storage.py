"""Dataset versions in the object store: one Parquet file per table under
``datasets/<project>/<version>/`` (shared.storage: a folder, or a bucket mirrored in each machine's
workspace).

The trainer and the inference service read these files directly (memory-mapped, column and split
pruned) instead of pulling rows through the API. Postgres stores each table's key and sha256, so a
folder may be mounted at a different place on each machine, and a bucket's copy is checked when fetched."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import NotFound
from shared.files import sha256_file
from shared.storage import ObjectStore, StorageError


def version_dir(project_id: uuid.UUID, version_id: uuid.UUID) -> str:
    return f"datasets/{project_id}/{version_id}"


def write_version(store: ObjectStore, relative: str, tables: dict[str, pa.Table]) -> dict[str, Any]:
    """Write every table, move the folder into place in one rename, and store it (a bucket: upload each
    file). Returns the tables' manifest; the row that names them is committed after this returns."""
    final = store.local(relative)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True, exist_ok=False)
    try:
        manifest: dict[str, Any] = {}
        for name, table in tables.items():
            path = staging / f"{name}.parquet"
            pq.write_table(table, path, compression="zstd", row_group_size=128 * 1024)
            manifest[name] = {
                "path": f"{relative}/{name}.parquet",
                "rows": table.num_rows,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "columns": table.column_names,
            }
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        store.publish(entry["path"] for entry in manifest.values())
    except BaseException:
        remove_version(store, relative)
        raise
    return manifest


def remove_version(store: ObjectStore, relative: str) -> None:
    store.delete_tree(relative)


def table_path(store: ObjectStore, tables: dict[str, Any], name: str) -> Path:
    """A local path of one table of a version (fetched into the workspace if the store is a bucket)."""
    entry = tables.get(name)
    if entry is None:
        raise NotFound(f"this dataset version has no {name} table (it has: {', '.join(tables) or 'none'})")
    try:
        return store.fetch(entry["path"], entry.get("sha256"))
    except StorageError as exc:
        if "is not in" in str(exc):
            raise NotFound(f"the {name} table of this dataset version is missing from {store.url}") from exc
        raise


def read_table(
    store: ObjectStore,
    tables: dict[str, Any],
    name: str,
    *,
    columns: list[str] | None = None,
    split: str | None = None,
) -> pa.Table:
    """One table of a version (``DatasetVersion.tables``), optionally only some columns or one split."""
    path = table_path(store, tables, name)
    filters = pc.field("split") == split if split is not None else None
    return pq.read_table(path, columns=columns, filters=filters, memory_map=True)
