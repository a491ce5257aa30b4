"""Index jobs: embed every product of a catalog with a registered bi-encoder, for the inference service."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.trainer import evaluation
from services.trainer.control import JobControl, in_thread
from services.trainer.jobs.base import JobRun
from services.trainer.jobs.version import VersionSpec, version_spec
from services.trainer.store import VersionResult
from shared.artifacts import rooted
from shared.datasets.catalog import catalog_text
from shared.files import file_entry, fsync_dir, fsync_tree


def index(spec: VersionSpec, control: JobControl) -> dict[str, Any]:
    """Embed every catalog product with the graph CPU serving embeds products with (the served graph, or a
    query-tower-only version's product graph); write `embeddings.npy` (float32, one L2-normalised row per
    product) and `product_ids.parquet` (the rows' ids, in order)."""
    assert spec.catalog is not None and spec.catalog_version_id is not None
    control.report(phase="index")
    model_file = spec.served_product_file
    ids = list(spec.catalog)
    vectors = evaluation.embed_all(
        spec.onnx(model_file).embed, [spec.catalog[p] for p in ids], control, "catalog"
    )
    control.check()
    relative = Path("catalog") / str(spec.catalog_version_id)
    final = spec.directory / relative
    staging = spec.directory / "catalog" / f".{spec.catalog_version_id}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        np.save(staging / "embeddings.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        pq.write_table(pa.table({"product_id": pa.array(ids, pa.string())}), staging / "product_ids.parquet")
        fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "dataset_version_id": str(spec.catalog_version_id),
        "model_file": model_file,
        "model_sha256": spec.artifacts[model_file].get("sha256"),  # the graph the vectors come from
        "count": len(ids),
        "dim": int(vectors.shape[1]) if len(ids) else 0,
        "files": {
            "embeddings": file_entry(spec.directory, str(relative / "embeddings.npy")),
            "product_ids": file_entry(spec.directory, str(relative / "product_ids.parquet")),
        },
    }


async def run(job: JobRun) -> VersionResult:
    spec = await version_spec(job)
    spec.catalog = await anyio.to_thread.run_sync(catalog_text, job.objects, job.claimed.tables)
    spec.catalog_version_id = job.claimed.catalog_version_id
    found = await in_thread(job.control, index, spec, job.control)
    found["files"] = rooted(found["files"], spec.relative)
    return VersionResult(result=found, progress=job.control.progress, artifacts={"catalog_index": found})
