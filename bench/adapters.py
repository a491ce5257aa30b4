"""Full fine-tuning against LoRA adapters, through a running RecForge stack, the same steps and seed.

    RECFORGE_CHECKPOINT_INTERVAL_S=60 recforge up --detach
    python bench/adapters.py ../shared/data/homedepot/relevance_dev.csv --format homedepot --steps 400

It imports the data into a new project and trains four bi-encoders through the queue, each promoted
when it is done: full fine-tuning, a LoRA adapter, a LoRA adapter on the query side only
(`query_tower_only`), and that last one again with another seed, as a retrain would be. For each it
prints the trainer's rerank and catalog nDCG@10 on the validation split (the served graph's; the
catalog view is dense retrieval over every product), training pairs/s, the worker's peak resident
memory during the job, the size of the last checkpoint (a checkpoint every
RECFORGE_CHECKPOINT_INTERVAL_S: 60 s above, so every variant writes one), and the seconds from the
promotion to the inference service answering /recommend with the version: embedding the catalog for
a new product side, or, for the query-side retrain, reusing the loaded version's catalog index.

Every variant trains with the platform's defaults but `max_steps` and the adapter settings: learning
rate 5e-5 for full fine-tuning, 2e-4 for adapters (their defaults), batches of 32, max_length 64,
seed 42. The stack's settings (RECFORGE_*) must be the stack's, as for bench/quality.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
from quality import Bench, console, print_header  # bench/quality.py, beside this script
from rich.table import Table

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("full fine-tuning", {}),
    ("LoRA (r 16)", {"adapter": "lora"}),
    ("LoRA, query tower only", {"adapter": "lora", "query_tower_only": True}),
    (
        "LoRA, query tower only, retrained (seed 43)",
        {"adapter": "lora", "query_tower_only": True, "seed": 43},
    ),
]


def catalog_indexes(inference: httpx.Client, key: str) -> dict[str, float]:
    """The inference service's count of catalog indexes by source (embedded, index_job, shared)."""
    scraped = inference.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
    counts: dict[str, float] = {}
    for line in scraped.splitlines():
        if line.startswith("recforge_inference_catalog_indexes_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            counts[source] = float(line.rsplit(" ", 1)[1])
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="Relevance data: a file, or a folder of a public format's.")
    parser.add_argument("--format", required=True, help="homedepot, esci, wands, csv, jsonl, parquet.")
    parser.add_argument("--kind", help="What a csv/jsonl/parquet file holds (relevance).")
    parser.add_argument("--catalog", type=Path, help="A catalog file to import first (csv/jsonl/parquet).")
    parser.add_argument("--steps", type=int, default=400, help="Optimiser steps of every variant.")
    parser.add_argument("--base-model", help="A local folder or hub id (default MiniLM).")
    parser.add_argument("--project", help="The project slug (default adapters-<time>).")
    parser.add_argument("--api-url", help="Default http://HOST:API_PORT from the settings.")
    parser.add_argument("--inference-url", help="Default http://HOST:INFERENCE_PORT from the settings.")
    parser.add_argument("--api-key", help="An admin key (default RECFORGE_API_KEY, else a new one).")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args(argv)
    if not args.path.exists():
        parser.error(f"{args.path}: no such file or folder")
    args.project = args.project or f"adapters-{dt.datetime.now():%Y%m%d-%H%M%S}"
    started = time.monotonic()
    bench = Bench(args)
    print_header()
    slug = bench.project()
    version = bench.data(slug)
    key = bench.service_key(slug)
    admin = str(bench.api.headers["Authorization"]).removeprefix("Bearer ")
    rows: list[dict[str, Any]] = []
    for label, settings in VARIANTS:
        model = bench.train(slug, version["id"], "bi_encoder", {"max_steps": args.steps, **settings})
        compute = model["compute"]
        before = catalog_indexes(bench.inference, admin)
        promoted = time.monotonic()
        bench.promote(slug, key, model)
        to_serving = time.monotonic() - promoted
        after = catalog_indexes(bench.inference, admin)
        source = next((s for s in after if after[s] > before.get(s, 0.0)), "?")
        adapter = (model["artifacts"].get("adapter") or {}).get("files") or {}
        rows.append(
            {
                "variant": label,
                "hyperparameters": model["hyperparameters"],
                "ndcg@10": model["metrics"]["ndcg@10"],
                "catalog_ndcg@10": model["metrics"]["catalog_ndcg@10"],
                "catalog_recall@10": model["metrics"]["catalog_recall@10"],
                "pairs_per_s": compute["pairs_per_s"],
                "train_seconds": compute["train_seconds"],
                "peak_rss_mb": (compute.get("peak_memory") or {}).get("rss_mb"),
                "checkpoint_bytes": compute.get("checkpoint_bytes"),
                "adapter_bytes": sum(entry["bytes"] for entry in adapter.values()) or None,
                "promotion_to_serving_s": round(to_serving, 2),
                "catalog_index": source,
                "model_version_id": model["id"],
            }
        )
        console.print(f"  promoted: serving after {to_serving:.1f} s (catalog index {source})")
    table = Table(title=f"{args.path.name}: bi-encoders of {args.steps} steps, seed 42, one after another")
    for column in (
        "variant", "rerank nDCG@10", "catalog nDCG@10", "catalog Recall@10", "pairs/s", "peak RSS MB",
        "checkpoint MB", "promotion to serving s", "catalog index",
    ):  # fmt: skip
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["variant"],
            f"{row['ndcg@10']:.4f}",
            f"{row['catalog_ndcg@10']:.4f}",
            f"{row['catalog_recall@10']:.4f}",
            f"{row['pairs_per_s']:.1f}",
            f"{row['peak_rss_mb']:,.0f}" if row["peak_rss_mb"] else "-",
            f"{row['checkpoint_bytes'] / 1e6:.1f}" if row["checkpoint_bytes"] else "-",
            f"{row['promotion_to_serving_s']:.1f}",
            row["catalog_index"],
        )
    console.print(table)
    results = {
        "project": slug,
        "steps": args.steps,
        "rows": rows,
        "seconds": round(time.monotonic() - started),
    }
    console.print(f"{slug}: done in {results['seconds'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
