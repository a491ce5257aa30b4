"""Feedback jobs: a window of impressions and events becomes dataset versions (relevance and sequences
rows, shared.feedback), optionally merged with a base version of people's judgments.

The job reads the logs through the job store, grades in a thread, writes the versions' Parquet files
and hands them to the store, which registers them and ends the job in one transaction. A version whose
content its dataset already holds is not written twice (a rerun of the same window names the first)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pyarrow as pa

from services.trainer.control import JobControl, in_thread
from services.trainer.jobs.base import JobRun
from services.trainer.store import NewDataset, NewDatasets
from shared.datasets import splits, stats, storage
from shared.datasets.pipeline import rows_hash, with_split
from shared.datasets.schema import SPLIT_GROUP
from shared.errors import ValidationFailed
from shared.feedback import Action, FeedbackOptions, Served, merge_judgments, relevance, sequences
from shared.models.enums import DatasetKind
from shared.storage import ObjectStore


def _known_products(store: ObjectStore, tables: dict[str, Any]) -> set[str]:
    return set(storage.read_table(store, tables, "catalog", columns=["product_id"])["product_id"].to_pylist())


def build(
    served: list[Served],
    actions: list[Action],
    options: FeedbackOptions,
    known: set[str] | None,
    base: pa.Table | None,
    control: JobControl,
) -> tuple[dict[DatasetKind, pa.Table], dict[str, Any]]:
    """The datasets' rows (split) and what the job's result says about them."""
    control.report(phase="grading", searches=sum(1 for s in served if s.query))
    graded = relevance(served, actions, options)
    table = graded.table
    unknown = 0
    if known is not None:
        mask = pa.array([p in known for p in table["product_id"].to_pylist()], pa.bool_())
        unknown = table.num_rows - int(pa.compute.sum(mask).as_py() or 0)
        table = table.filter(mask)
    sources = {"feedback": table.num_rows}
    if base is not None:
        table, sources = merge_judgments(table, base)
    control.check()
    spec = splits.SplitSpec(options.split_seed, options.valid_fraction, options.test_fraction)
    out: dict[DatasetKind, pa.Table] = {}
    report: dict[str, Any] = {
        "window": {"from": options.start.isoformat(), "to": options.end.isoformat()},
        "impressions": len(served),
        "events": len(actions),
        "relevance": {**graded.stats, "unknown_products": unknown, "rows_by_source": sources},
    }
    if table.num_rows:
        out[DatasetKind.relevance] = table
    if options.sequences:
        rows = sequences(actions, known)
        report["sequences"] = {"rows": rows.num_rows, "users": len(set(rows["user_id"].to_pylist()))}
        if rows.num_rows:
            out[DatasetKind.sequences] = rows
    control.check()
    if not out:
        raise ValidationFailed(
            f"nothing to learn from in this window: {report['relevance']['searches']} searches, "
            f"{report['relevance']['pairs_seen']} (query, product) pairs shown, none of them "
            f"{options.min_impressions} times or more"
            + (", and no shopper carted or bought two products" if options.sequences else "")
            + ": widen the window (from/to) or lower min_impressions"
        )
    return {kind: with_split(kind, rows, spec) for kind, rows in out.items()}, report


def _write(
    job: JobRun, kind: DatasetKind, table: pa.Table, options: FeedbackOptions, report: dict[str, Any]
) -> NewDataset:
    claimed = job.claimed
    version_id = uuid.uuid4()
    relative = storage.version_dir(claimed.job.project_id, version_id)
    manifest = storage.write_version(job.objects, relative, {kind.value: table})
    group = SPLIT_GROUP[kind]
    spec = splits.SplitSpec(options.split_seed, options.valid_fraction, options.test_fraction)
    described = stats.compute({kind.value: table}, kind)
    if kind == DatasetKind.relevance:
        described["sources"] = report["relevance"]["rows_by_source"]
    lineage = {
        "feedback_job_id": str(claimed.job.id),
        "from": options.start.isoformat(),
        "to": options.end.isoformat(),
        "base_dataset_version_id": str(claimed.job.dataset_version_id)
        if claimed.job.dataset_version_id
        else None,
        "impressions": report["impressions"],
        "events": report["events"],
    }
    return NewDataset(
        name=options.name if kind == DatasetKind.relevance else f"{options.name}-sequences",
        kind=kind,
        version_id=version_id,
        storage_path=relative,
        tables=manifest,
        row_count=table.num_rows,
        content_hash=rows_hash(kind, table, options.split_seed),
        stats=described,
        splits=splits.summary(table, group, spec),
        split_seed=options.split_seed,
        lineage=lineage,
    )


async def run(job: JobRun) -> NewDatasets:
    assert job.store is not None
    claimed = job.claimed
    options = FeedbackOptions.model_validate(claimed.job.hyperparameters)
    job.control.report(phase="reading the logs")
    served, actions = await job.store.feedback_window(claimed.job.project_id, options.start, options.end)
    known = None
    if claimed.catalog_tables is not None:
        known = await anyio.to_thread.run_sync(_known_products, job.objects, claimed.catalog_tables)
    base = None
    if claimed.tables:
        base = await anyio.to_thread.run_sync(
            lambda: storage.read_table(job.objects, claimed.tables, "relevance")
        )
    tables, report = await in_thread(job.control, build, served, actions, options, known, base, job.control)
    job.control.report(phase="writing")
    written = []
    for kind, table in tables.items():
        written.append(await anyio.to_thread.run_sync(_write, job, kind, table, options, report))
    return NewDatasets(datasets=tuple(written), result=report, progress=job.control.progress)
