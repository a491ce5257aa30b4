"""Training and evaluation examples read from a dataset version's Parquet tables.

The trainer learns from them and scores models on their validation split; the benchmarks read the same
split, so the figures they print are measured on exactly what the trainer measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from shared.datasets.catalog import catalog_text, history_text
from shared.datasets.storage import read_table
from shared.errors import ValidationFailed
from shared.models.enums import DatasetKind
from shared.storage import ObjectStore


@dataclass
class Judged:
    """Graded (query, product) judgments of one split, grouped by query."""

    queries: dict[str, str]  # query id -> text
    candidates: dict[str, list[str]]  # query id -> judged product ids
    grades: dict[str, dict[str, float]]  # query id -> product id -> grade
    exclude: dict[str, set[str]] = field(default_factory=dict)  # query id -> products to skip (history)
    histories: dict[str, list[str]] = field(default_factory=dict)  # user -> product ids, oldest first


@dataclass
class Examples:
    kind: DatasetKind
    product_text: dict[str, str]
    train: list[tuple[str, str, float]]  # (query text, product id, normalised grade 0..1)
    valid: Judged
    grade_range: tuple[float, float]
    labels: list[str] = field(default_factory=list)
    texts: dict[str, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # classifier: split -> (text, label)
    # query text -> products never a negative for it (sequences: the history and every next item)
    train_exclude: dict[str, set[str]] = field(default_factory=dict)

    @property
    def relevant_from(self) -> float:
        """Grades at or above the middle of the scale count as relevant for MRR and recall."""
        low, high = self.grade_range
        return low + (high - low) / 2


def load(
    store: ObjectStore, kind: DatasetKind, tables: dict[str, Any], catalog_tables: dict[str, Any] | None
) -> Examples:
    if kind == DatasetKind.labeled_text:
        return _labeled(store, tables)
    source = tables if "catalog" in tables else catalog_tables
    if source is None:
        raise ValidationFailed("the project has no catalog: import one before training on this data")
    products = catalog_text(store, source)
    if kind == DatasetKind.relevance:
        return _relevance(store, tables, products)
    if kind == DatasetKind.sequences:
        return _sequences(store, tables, products)
    raise ValidationFailed(f"cannot train on {kind.value} data")


def _relevance(store: ObjectStore, tables: dict[str, Any], products: dict[str, str]) -> Examples:
    table = read_table(store, tables, "relevance")
    low = float(pc.min(table["grade"]).as_py())
    high = float(pc.max(table["grade"]).as_py())
    span = (high - low) or 1.0
    train: list[tuple[str, str, float]] = []
    valid = Judged({}, {}, {})
    for query, pid, grade, split in zip(
        table["query"].to_pylist(),
        table["product_id"].to_pylist(),
        table["grade"].to_pylist(),
        table["split"].to_pylist(),
        strict=True,
    ):
        if pid not in products:
            continue
        if split == "train":
            train.append((query, pid, (grade - low) / span))
        elif split == "valid":
            valid.queries.setdefault(query, query)
            valid.candidates.setdefault(query, []).append(pid)
            valid.grades.setdefault(query, {})[pid] = grade
    return Examples(DatasetKind.relevance, products, train, valid, (low, high))


def _sequences(store: ObjectStore, tables: dict[str, Any], products: dict[str, str]) -> Examples:
    table = read_table(store, tables, "sequences")
    train: list[tuple[str, str, float]] = []
    exclude: dict[str, set[str]] = {}
    valid = Judged({}, {}, {})
    longest: dict[str, tuple[int, list[str], str]] = {}
    for user, history, nxt, split in zip(
        table["user_id"].to_pylist(),
        table["history"].to_pylist(),
        table["next_item"].to_pylist(),
        table["split"].to_pylist(),
        strict=True,
    ):
        if split == "train":
            text = history_text(history, products)
            train.append((text, nxt, 1.0))
            exclude.setdefault(text, set()).update(history, (nxt,))
        elif split == "valid" and len(history) >= longest.get(user, (-1, [], ""))[0]:
            longest[user] = (len(history), history, nxt)
    for user, (_, history, nxt) in longest.items():  # each validation user's latest step
        valid.queries[user] = history_text(history, products)
        valid.grades[user] = {nxt: 1.0}
        valid.exclude[user] = set(history)
        valid.histories[user] = list(history)
    return Examples(DatasetKind.sequences, products, train, valid, (0.0, 1.0), train_exclude=exclude)


def _labeled(store: ObjectStore, tables: dict[str, Any]) -> Examples:
    table = read_table(store, tables, "labeled_text")
    texts: dict[str, list[tuple[str, str]]] = {}
    for text, label, split in zip(
        table["text"].to_pylist(), table["label"].to_pylist(), table["split"].to_pylist(), strict=True
    ):
        texts.setdefault(split, []).append((text, label))
    labels = sorted({label for pairs in texts.values() for _, label in pairs})
    return Examples(
        DatasetKind.labeled_text, {}, [], Judged({}, {}, {}), (0.0, 1.0), labels=labels, texts=texts
    )
