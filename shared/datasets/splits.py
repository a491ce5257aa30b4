"""Deterministic train/valid/test splits by group.

Each group (a query, a user, a text) goes to one split only, chosen by a keyed hash of the group and
the seed. The same seed always gives the same assignment, and a group keeps its split when other
groups are added or removed, so a re-imported, grown dataset never moves a test query into train."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.datasets.schema import SPLITS


@dataclass(frozen=True)
class SplitSpec:
    seed: int = 42
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError("split fractions must lie in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must leave rows for training (< 1)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fractions": {
                "train": round(1 - self.valid_fraction - self.test_fraction, 6),
                "valid": self.valid_fraction,
                "test": self.test_fraction,
            },
        }


def _unit(seed: int, group: str) -> float:
    digest = hashlib.blake2b(group.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(groups: pa.ChunkedArray | pa.Array, spec: SplitSpec) -> pa.Array:
    """The split name of every row, decided per distinct group."""
    distinct = pc.unique(groups)
    units = np.fromiter((_unit(spec.seed, g) for g in distinct.to_pylist()), float, len(distinct))
    names = np.where(
        units < spec.test_fraction,
        "test",
        np.where(units < spec.test_fraction + spec.valid_fraction, "valid", "train"),
    )
    per_group = pa.array(names.tolist(), pa.string())
    return pc.take(per_group, pc.index_in(groups, value_set=distinct))


def summary(table: pa.Table, group: str, spec: SplitSpec) -> dict[str, Any]:
    """Rows and groups per split, stored with the version."""
    counts = table.group_by("split").aggregate([("split", "count"), (group, "count_distinct")])
    rows = dict(zip(counts["split"].to_pylist(), counts["split_count"].to_pylist(), strict=True))
    groups = dict(
        zip(counts["split"].to_pylist(), counts[f"{group}_count_distinct"].to_pylist(), strict=True)
    )
    return {
        "by": group,
        **spec.to_dict(),
        "rows": {name: int(rows.get(name, 0)) for name in SPLITS},
        "groups": {name: int(groups.get(name, 0)) for name in SPLITS},
    }
