"""Dataset versions on disk: one Parquet file per table under DATA_DIR/datasets/<project>/<version>/.

The trainer and the inference service read these files directly (memory-mapped, column and split
pruned) instead of pulling rows through the API. Paths stored in Postgres are relative to DATA_DIR,
so a shared filesystem may be mounted at a different place on each machine."""

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


def version_dir(project_id: uuid.UUID, version_id: uuid.UUID) -> str:
    return f"datasets/{project_id}/{version_id}"


def write_version(data_dir: Path, relative: str, tables: dict[str, pa.Table]) -> dict[str, Any]:
    """Write every table, then move the folder into place in one rename. Returns the tables' manifest."""
    final = data_dir / relative
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
    return manifest


def remove_version(data_dir: Path, relative: str) -> None:
    shutil.rmtree(data_dir / relative, ignore_errors=True)


def read_table(
    data_dir: Path,
    tables: dict[str, Any],
    name: str,
    *,
    columns: list[str] | None = None,
    split: str | None = None,
) -> pa.Table:
    """One table of a version (``DatasetVersion.tables``), optionally only some columns or one split."""
    entry = tables.get(name)
    if entry is None:
        raise NotFound(f"this dataset version has no {name} table (it has: {', '.join(tables) or 'none'})")
    path = data_dir / entry["path"]
    if not path.exists():
        raise NotFound(f"the {name} table of this dataset version is missing from {path}")
    filters = pc.field("split") == split if split is not None else None
    return pq.read_table(path, columns=columns, filters=filters, memory_map=True)
