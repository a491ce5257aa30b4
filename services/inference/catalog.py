"""A project's catalog as the inference service searches it: embeddings (exact or HNSW), BM25, and
the columns that filters and merchandising read."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from shared.files import verify
from shared.search import BM25Index

log = logging.getLogger("recforge.inference")

FloatArray = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Filters:
    # a category or a level above it ("Tools" matches "Tools > Saws"); levels split at " > " or "/"
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None

    def empty(self) -> bool:
        return self == Filters()


_SEPARATORS = re.compile(r"\s*(?:>|/)\s*")


def category_path(category: str) -> str:
    """A category as filters compare it: lowercased, its levels split at ``>`` or ``/`` and joined by
    " > " ("Tools/Power Tools", "tools > power tools" and "Tools>Power Tools" are one path)."""
    return " > ".join(level for level in _SEPARATORS.split(category.strip().lower()) if level)


def in_category(category: str, wanted: str) -> bool:
    """Whether a category path is `wanted` or lies under it ("tools" holds "tools > saws"); both as
    category_path gives them."""
    return category == wanted or category.startswith(wanted + " > ")


def _with_ancestors(paths: set[str]) -> frozenset[str]:
    """Every category path and each level above it: what a filter may name."""
    found: set[str] = set()
    for path in paths:
        levels = path.split(" > ") if path else []
        found.update(" > ".join(levels[:depth]) for depth in range(1, len(levels) + 1))
    return frozenset(found)


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table[name].to_pylist() if name in table.column_names else None


class CatalogIndex:
    """Products in a fixed order; vectors[i] is product ids[i]'s embedding (L2-normalised).

    `vectors` is given the product ids (catalog order, duplicates dropped) and returns their rows."""

    def __init__(
        self,
        catalog_version_id: str,
        table: pa.Table,
        texts: dict[str, str],
        vectors: Callable[[list[str]], FloatArray],
        *,
        ann_threshold: int,
        threads: int = 1,
    ) -> None:
        self.catalog_version_id = catalog_version_id
        ids = table["product_id"].to_pylist()
        keep = [i for i, pid in enumerate(ids) if pid in texts]
        seen: set[str] = set()
        unique = []
        for i in keep:  # a product listed twice keeps its first row
            if ids[i] not in seen:
                seen.add(ids[i])
                unique.append(i)
        table = table.take(pa.array(unique, pa.int64()))
        self.ids: list[str] = table["product_id"].to_pylist()
        if not self.ids:
            raise ValueError("the catalog has no products the model can read")
        embedded = vectors(self.ids)
        if embedded.shape[0] != len(self.ids):
            raise ValueError(f"{embedded.shape[0]} vectors for {len(self.ids)} products")
        self.position = {pid: i for i, pid in enumerate(self.ids)}
        self.titles: list[str] = table["title"].to_pylist()
        self.texts = {pid: texts[pid] for pid in self.ids}  # what the model reads for each product
        self.vectors = np.ascontiguousarray(embedded, dtype=np.float32)
        categories = _column(table, "category")
        self.categories = (
            np.asarray([category_path(c or "") for c in categories], dtype=object)
            if categories is not None
            else None
        )
        self.category_paths = _with_ancestors(set(self.categories) if self.categories is not None else set())
        prices = _column(table, "price")
        self.prices = (
            np.asarray([math.nan if p is None else float(p) for p in prices], dtype=np.float64)
            if prices is not None
            else None
        )
        stock = _column(table, "in_stock")
        self.in_stock = np.asarray([s is not False for s in stock], dtype=bool) if stock is not None else None
        self.bm25 = BM25Index(self.ids, [texts[p] for p in self.ids])
        self.ann: Any = None
        if len(self.ids) >= ann_threshold:
            from usearch.index import Index

            index = Index(
                expansion_search=128,
                ndim=self.vectors.shape[1],
                metric="ip",
                dtype="f16",  # half the memory and about 0.6x the search time of f32 (bench/serving.py)
                connectivity=16,
                expansion_add=64,
            )
            index.add(np.arange(len(self.ids), dtype=np.uint64), self.vectors, threads=threads)
            self.ann = index
            log.info("built an HNSW index", extra={"products": len(self.ids), "catalog": catalog_version_id})

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, filters: Filters) -> Mask | None:
        """Products the filters allow, or None when nothing is filtered."""
        if filters.empty():
            return None
        allowed = np.ones(len(self.ids), dtype=bool)
        if filters.category is not None:
            if self.categories is None:
                return np.zeros(len(self.ids), dtype=bool)
            wanted = category_path(filters.category)
            allowed &= np.fromiter(
                (in_category(c, wanted) for c in self.categories),
                dtype=bool,
                count=len(self.ids),
            )
        if filters.price_min is not None or filters.price_max is not None:
            if self.prices is None:
                return np.zeros(len(self.ids), dtype=bool)
            low = -np.inf if filters.price_min is None else filters.price_min
            high = np.inf if filters.price_max is None else filters.price_max
            allowed &= (self.prices >= low) & (self.prices <= high)  # unknown prices never match
        if filters.in_stock is not None and self.in_stock is not None:
            allowed &= self.in_stock == filters.in_stock
        return allowed

    def filter_warnings(self, filters: Filters) -> list[str]:
        """What a request's filters name that the catalog does not have (the answer is then empty)."""
        if filters.category is None:
            return []
        wanted = category_path(filters.category)
        if self.categories is None:
            return [f"no product has a category: the filter category {filters.category!r} matches none"]
        if wanted in self.category_paths:
            return []
        near = difflib.get_close_matches(wanted, sorted(self.category_paths), n=3, cutoff=0.85)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        return [f"no product is in category {filters.category!r}{hint}"]

    def dense(
        self, vector: FloatArray, n: int, allowed: Mask | None, exclude: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """The n products nearest the (normalised) vector by inner product, best first."""
        if not self.ids or n < 1:
            return []
        if self.ann is not None:
            wanted = n + len(exclude or ())
            fetch = wanted if allowed is None else min(len(self.ids), wanted * 8)
            found = self.ann.search(vector.astype(np.float32), fetch)
            hits = []
            for key, distance in zip(found.keys.tolist(), found.distances.tolist(), strict=True):
                if (allowed is not None and not allowed[key]) or (exclude and key in exclude):
                    continue
                hits.append((int(key), 1.0 - float(distance)))
                if len(hits) == n:
                    break
            if len(hits) == n or allowed is None:
                return hits
            # a selective filter: fall back to exact search over the products it allows
        scores = self.vectors @ vector.astype(np.float32)
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        if exclude:
            scores[list(exclude)] = -np.inf
        k = min(n, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def lexical(self, query: str, n: int, allowed: Mask | None) -> list[tuple[int, float]]:
        scores = self.bm25.query_scores(query)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        hits = np.flatnonzero(scores > 0)
        if hits.size > n:
            hits = hits[np.argpartition(-scores[hits], n - 1)[:n]]
        hits = hits[np.argsort(-scores[hits], kind="stable")]
        return [(int(i), float(scores[i])) for i in hits]


def load_vectors(directory: Path, files: dict[str, Any], ids: list[str]) -> FloatArray | None:
    """Embeddings an index job wrote, reordered to `ids`; None when they do not cover them. The files
    must match their recorded digests (DigestMismatch)."""
    import pyarrow.parquet as pq

    vectors = np.load(verify(directory, files["embeddings"]), mmap_mode="r")
    stored = pq.read_table(verify(directory, files["product_ids"]))["product_id"].to_pylist()
    row = {pid: i for i, pid in enumerate(stored)}
    if any(pid not in row for pid in ids):
        return None
    return np.ascontiguousarray(vectors[[row[pid] for pid in ids]], dtype=np.float32)
