"""The zero-shot baseline's cost: the base model embedding catalog texts in torch and as the fp32 ONNX
graph a CPU trainer exports once per base model (services.trainer.evaluation.zero_shot), side by side.

    python bench/zero_shot.py ../shared/data/homedepot/relevance_dev.csv --format homedepot --products 5000

Both embed the same product texts (those the trainer's evaluation embeds, from the dataset's import),
in length order as the evaluation does, on this machine's threads, one after the other; the graph's
one-time export is timed apart. Prints texts/s of each, the speed-up and how far the vectors differ."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from services.trainer import evaluation  # noqa: E402
from services.trainer.control import JobControl  # noqa: E402
from services.trainer.device import setup_threads  # noqa: E402
from services.trainer.finetune.base import resolve_base_model  # noqa: E402
from shared.datasets.formats import FORMAT_KIND, DataFormat, ImportOptions  # noqa: E402
from shared.datasets.pipeline import prepare  # noqa: E402
from shared.datasets.splits import SplitSpec  # noqa: E402
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters  # noqa: E402


def catalog_texts(path: Path, data_format: DataFormat, count: int) -> list[str]:
    """The first ``count`` product texts of a dataset, as the trainer's evaluation embeds them (0: all)."""
    from shared.datasets import storage
    from shared.datasets.examples import load
    from shared.storage import folder_store

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    prepared = prepare(files, ImportOptions(data_format), SplitSpec())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = storage.write_version(folder_store(Path(tmp)), "data", prepared.tables)
        examples = load(folder_store(Path(tmp)), FORMAT_KIND[data_format], manifest, None)
    texts = list(examples.product_text.values())
    return texts[:count] if count else texts


def _timed(scorer: evaluation.Scorer, texts: list[str]) -> tuple[np.ndarray, float]:
    assert scorer.embed is not None
    started = time.perf_counter()
    vectors = evaluation.embed_all(scorer.embed, texts, JobControl(), "catalog")
    seconds = time.perf_counter() - started
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--format", type=DataFormat, choices=list(FORMAT_KIND), required=True)
    parser.add_argument("--products", type=int, default=5000, help="Product texts to embed (0: all).")
    parser.add_argument("--max-length", type=int, default=Hyperparameters().max_length)
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    setup_threads()
    texts = catalog_texts(args.path, args.format, args.products)
    base = resolve_base_model(args.base_model)
    cpu = torch.device("cpu")
    print(f"{platform.machine()}, {torch.get_num_threads()} threads; {len(texts):,} product texts, "
          f"max_length {args.max_length}")  # fmt: skip

    in_torch, torch_s = _timed(evaluation.zero_shot(base, cpu, args.max_length)(), texts)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        graph_scorer = evaluation.zero_shot(base, cpu, args.max_length, Path(cache))()
        export_s = time.perf_counter() - started
        as_graph, graph_s = _timed(graph_scorer, texts)
    diff = float(np.max(np.abs(in_torch - as_graph)))
    figures = {
        "texts": len(texts),
        "torch_texts_per_s": round(len(texts) / torch_s, 1),
        "onnx_texts_per_s": round(len(texts) / graph_s, 1),
        "speedup": round(torch_s / graph_s, 2),
        "export_seconds": round(export_s, 1),
        "max_abs_diff": diff,
    }
    print(f"torch fp32   {torch_s:7.1f} s  {figures['torch_texts_per_s']:8.1f} texts/s")
    print(f"ONNX fp32    {graph_s:7.1f} s  {figures['onnx_texts_per_s']:8.1f} texts/s  "
          f"({figures['speedup']:.2f}x)")  # fmt: skip
    print(f"the graph's export and check, once per base model: {export_s:.1f} s")
    print(f"largest difference between their unit vectors: {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
