"""Descriptive statistics of a dataset version: counts, label distributions, text lengths."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.models.enums import DatasetKind

_TEXT_COLUMNS = {
    DatasetKind.catalog: ("title", "description"),
    DatasetKind.relevance: ("query",),
    DatasetKind.labeled_text: ("text",),
}
_PERCENTILES = (50, 90, 99)


def _distinct(column: pa.ChunkedArray) -> int:
    return int(pc.count_distinct(column).as_py())


def _value_counts(column: pa.ChunkedArray, limit: int = 50) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null()).to_pylist()
    counts.sort(key=lambda vc: (-vc["counts"], str(vc["values"])))
    return {_label(vc["values"]): int(vc["counts"]) for vc in counts[:limit]}


def _label(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _lengths(column: pa.ChunkedArray, unit: str) -> dict[str, float] | None:
    lengths = (pc.list_value_length(column) if unit == "items" else pc.utf8_length(column)).drop_null()
    values = lengths.to_numpy()
    if values.size == 0:
        return None
    out = {f"p{p}": float(np.percentile(values, p)) for p in _PERCENTILES}
    out["mean"] = round(float(values.mean()), 2)
    out["max"] = float(values.max())
    return out


def compute(tables: dict[str, pa.Table], kind: DatasetKind) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "rows": sum(t.num_rows for name, t in tables.items() if name == kind.value),
        "tables": {name: t.num_rows for name, t in tables.items()},
    }
    if "catalog" in tables:
        stats["products"] = _distinct(tables["catalog"]["product_id"])
        categories = tables["catalog"]["category"]
        if categories.null_count < len(categories):
            stats["categories"] = _distinct(categories.drop_null())
    main = tables.get(kind.value)
    if main is None:
        return stats
    if "query" in main.column_names:
        stats["queries"] = _distinct(main["query"])
    if "user_id" in main.column_names:
        stats["users"] = _distinct(main["user_id"])
    if kind in {DatasetKind.relevance, DatasetKind.interactions}:
        stats["products_referenced"] = _distinct(main["product_id"])
    if kind == DatasetKind.sequences:
        items = pa.chunked_array([pc.list_flatten(main["history"]), main["next_item"]])
        stats["products_referenced"] = _distinct(items)
        stats["history_length"] = _lengths(main["history"], "items")
    if kind == DatasetKind.relevance:
        stats["grades"] = _value_counts(main["grade"])
        stats["judgments_per_query"] = round(main.num_rows / max(1, stats["queries"]), 2)
    elif kind == DatasetKind.interactions:
        stats["events"] = _value_counts(main["event"])
        stats["time_range"] = {
            "min": pc.min(main["timestamp"]).as_py().isoformat() if main.num_rows else None,
            "max": pc.max(main["timestamp"]).as_py().isoformat() if main.num_rows else None,
        }
    elif kind == DatasetKind.labeled_text:
        stats["labels"] = _value_counts(main["label"], limit=1000)
    lengths: dict[str, Any] = {}
    for name, table in tables.items():
        for column in _TEXT_COLUMNS.get(DatasetKind(name), ()):
            measured = _lengths(table[column], "chars")
            if measured is not None:
                lengths[f"{name}.{column}"] = measured
    stats["text_length_chars"] = lengths
    return stats
