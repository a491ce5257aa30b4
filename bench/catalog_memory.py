"""Memory one inference replica spends per catalog size: how large a catalog one replica serves.

    python bench/catalog_memory.py ../shared/data/homedepot/relevance_dev.csv --sizes 100000 300000 1000000

Builds the structure `/recommend` searches (services.inference.catalog.CatalogIndex: product ids,
titles and texts, 384-dimension float32 vectors, the BM25 index of hybrid retrieval and, from
RECFORGE_ANN_THRESHOLD products on, the HNSW index) for catalogs of each size, each in a fresh process,
and reports the resident memory it adds. Titles are Home Depot's (repeated with a serial number past
the file's distinct products, so texts have real lengths); vectors are random unit vectors, since memory
does not depend on their values and embedding a million titles takes hours on a laptop CPU. The ONNX
model's own memory (tens of MB, the same at any catalog size) is not counted."""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

DIM = 384


def _titles(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return sorted({row["product_title"] for row in csv.DictReader(handle) if row.get("product_title")})


def measure(path: Path, size: int, ann_threshold: int) -> dict[str, float]:
    from services.inference.catalog import CatalogIndex

    titles = _titles(path)
    ids = [f"p{n}" for n in range(size)]
    texts = {pid: f"{titles[n % len(titles)]} {n // len(titles)}".strip() for n, pid in enumerate(ids)}
    table = pa.table({"product_id": ids, "title": [texts[p] for p in ids]})
    rng = np.random.default_rng(0)

    def vectors(wanted: list[str]) -> np.ndarray:
        found = rng.standard_normal((len(wanted), DIM), dtype=np.float32)
        found /= np.linalg.norm(found, axis=1, keepdims=True)
        return found

    gc.collect()
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    index = CatalogIndex(
        "bench", table, texts, vectors, ann_threshold=ann_threshold, threads=psutil.cpu_count()
    )
    built_s = time.perf_counter() - started
    del table, texts
    gc.collect()
    after = psutil.Process().memory_info().rss
    return {
        "products": len(index),
        "rss_mb": (after - before) / 2**20,
        "vectors_mb": index.vectors.nbytes / 2**20,
        "hnsw_mb": (index.ann.memory_usage / 2**20) if index.ann is not None else 0.0,
        "build_s": built_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("titles", type=Path, help="Home Depot relevance CSV (its product_title column)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--ann-threshold", type=int, default=20_000, help="RECFORGE_ANN_THRESHOLD")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a size measured in this process
    args = parser.parse_args()
    if not args.titles.exists():
        parser.error(f"{args.titles} does not exist: pass the Home Depot relevance CSV")
    if args.one:
        print(json.dumps(measure(args.titles, args.one, args.ann_threshold)))
        return
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {psutil.cpu_count()} cores, python {platform.python_version()}")
    header = ("products", "RSS added MB", "vectors MB", "HNSW MB", "build s", "MB per 1M")
    print(" ".join(f"{h:>13}" for h in header))
    for size in args.sizes:
        run = subprocess.run(
            [
                sys.executable,
                __file__,
                str(args.titles),
                "--one",
                str(size),
                "--ann-threshold",
                str(args.ann_threshold),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(run.stdout.strip().splitlines()[-1])
        per_million = found["rss_mb"] / found["products"] * 1_000_000
        print(
            f"{found['products']:>13,} {found['rss_mb']:>13,.0f} {found['vectors_mb']:>13,.0f} "
            f"{found['hnsw_mb']:>13,.0f} {found['build_s']:>13.1f} {per_million:>13,.0f}"
        )


if __name__ == "__main__":
    main()
