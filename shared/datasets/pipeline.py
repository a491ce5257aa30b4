"""From uploaded files to validated, split, described tables: the CPU-bound part of an import.

Pure and synchronous: the API runs it in a worker thread, tests and benchmarks call it directly."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shared.datasets import splits, stats
from shared.datasets.formats import ImportOptions, parse
from shared.datasets.report import ErrorCollector
from shared.datasets.schema import SPLIT_GROUP, schema_for
from shared.datasets.validate import normalize
from shared.models.enums import DatasetKind


@dataclass
class Prepared:
    kind: DatasetKind
    tables: dict[str, pa.Table]
    encoding: str | None
    stats: dict[str, Any]
    splits: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def row_count(self) -> int:
        return int(self.tables[self.kind.value].num_rows)


def content_hash(file_digests: Sequence[str], options: ImportOptions, spec: splits.SplitSpec) -> str:
    """The version's identity: the files' bytes (in any order, names ignored) and every option that
    changes what is stored. The same upload with the same options always maps to the same version."""
    identity = {
        "files": sorted(file_digests),
        "format": options.format.value,
        "kind": options.kind.value if options.kind else None,
        "encoding": options.encoding,
        "locale": options.locale,
        "split": spec.to_dict(),
        "schema": 1,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def rows_hash(kind: DatasetKind, table: pa.Table, split_seed: int) -> str:
    """The identity of a version made from rows rather than files (feedback jobs, labelling queues): its
    rows, in order, and what they were split by."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind.value, "schema": 1, "split": split_seed}).encode())
    for batch in table.to_batches():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def with_split(kind: DatasetKind, table: pa.Table, spec: splits.SplitSpec) -> pa.Table:
    """Rows of ``kind`` given their split (by the kind's group: a relevance row by its query) and cast to
    the stored schema."""
    table = table.append_column("split", splits.assign(table[SPLIT_GROUP[kind]], spec))
    return table.cast(schema_for(kind))


def prepare(
    files: Sequence[Path],
    options: ImportOptions,
    spec: splits.SplitSpec,
    *,
    known_product_ids: pa.Array | None = None,
    max_errors: int = 100,
) -> Prepared:
    """Parse, validate (all or nothing: raises ImportProblem with the first errors), split and describe."""
    started = time.perf_counter()
    parsed = parse(files, options)
    errors = ErrorCollector(limit=max_errors)
    by_kind: dict[DatasetKind, list[pa.Table]] = {}
    catalog_sources = [s for s in parsed.sources if s.kind == DatasetKind.catalog]
    for source in catalog_sources:
        by_kind.setdefault(DatasetKind.catalog, []).append(normalize(source, errors))
    product_ids = known_product_ids
    if DatasetKind.catalog in by_kind:
        product_ids = pc.unique(pa.chunked_array([t["product_id"] for t in by_kind[DatasetKind.catalog]]))
        product_ids = product_ids.drop_null()
    for source in parsed.sources:
        if source.kind != DatasetKind.catalog:
            by_kind.setdefault(source.kind, []).append(normalize(source, errors, product_ids))
    errors.raise_if_any()

    warnings = list(parsed.warnings)
    if product_ids is None and parsed.kind in {
        DatasetKind.relevance,
        DatasetKind.interactions,
        DatasetKind.sequences,
    }:
        warnings.append("the project has no catalog yet: product ids were not checked against one")
    tables: dict[str, pa.Table] = {}
    split_summary: dict[str, Any] = {}
    for kind, parts in by_kind.items():
        table = pa.concat_tables(parts)
        group = SPLIT_GROUP.get(kind)
        if group is not None:
            table = table.append_column("split", splits.assign(table[group], spec))
            split_summary = splits.summary(table, group, spec)
        tables[kind.value] = table.cast(schema_for(kind))
    return Prepared(
        kind=parsed.kind,
        tables=tables,
        encoding=parsed.encoding,
        stats=stats.compute(tables, parsed.kind),
        splits=split_summary,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )
