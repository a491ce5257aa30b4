"""Fine-tune on a dataset and print the model's validation metrics beside BM25 and zero-shot MiniLM.

    python bench/finetune_quality.py ../shared/data/homedepot/relevance_dev.csv --format homedepot \\
        --job-type bi_encoder --max-steps 300

Runs the trainer's own job pipeline (train, evaluate, export, int8 check) in-process, without the
API or the queue, on the dataset's deterministic train/valid split (seed 42)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from options import hyperparameter  # bench/options.py, beside this script

from services.trainer.control import JobControl
from services.trainer.device import pick_device, setup_threads
from services.trainer.evaluation import baselines_cache_file
from services.trainer.jobs.finetune import FineTuneSpec, train_and_export
from shared.datasets import storage
from shared.datasets.examples import load
from shared.datasets.formats import FORMAT_KIND, DataFormat, ImportOptions
from shared.datasets.pipeline import prepare
from shared.datasets.splits import SplitSpec
from shared.models.enums import JobType
from shared.storage import folder_store
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--format", type=DataFormat, choices=list(FORMAT_KIND), required=True)
    parser.add_argument(
        "--job-type",
        type=JobType,
        choices=[JobType.bi_encoder, JobType.cross_encoder],
        default=JobType.bi_encoder,
    )
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--learning-rate", type=float, help="Default: the job's (5e-5, or 2e-4 with an adapter)."
    )
    parser.add_argument(
        "--hard-negatives", type=int, default=0, help="Mined negatives per pair (bi-encoder)."
    )
    parser.add_argument("--set", dest="hp", action="append", type=hyperparameter, default=[],
                        help="Another hyperparameter, NAME=VALUE (repeatable).")  # fmt: skip
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="Keep the baselines and the zero-shot catalog embeddings here, as a trainer does; a second "
        "run with the same folder measures a job whose baselines are known (default: none kept).",
    )
    args = parser.parse_args()
    setup_threads()
    files = sorted(p for p in args.path.iterdir() if p.is_file()) if args.path.is_dir() else [args.path]
    prepared = prepare(files, ImportOptions(args.format), SplitSpec())
    hp = Hyperparameters(
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hard_negatives=args.hard_negatives,
        **dict(args.hp),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = storage.write_version(folder_store(root), "data", prepared.tables)
        examples = load(folder_store(root), FORMAT_KIND[args.format], manifest, None)
        spec = FineTuneSpec(
            args.job_type,
            args.base_model,
            hp,
            examples,
            pick_device("auto"),
            root / "work",
            root / "out",
            1e9,
            0.01,
            baselines_cache=(
                baselines_cache_file(args.cache_dir, "bench", args.base_model, hp.max_length, args.job_type)
                if args.cache_dir
                else None
            ),
            vectors_cache=args.cache_dir,
        )
        (root / "work").mkdir()
        started = time.perf_counter()
        outcome = train_and_export(spec, JobControl())
        seconds = time.perf_counter() - started
    queries = len(examples.valid.queries)
    print(
        f"{args.path.name}: {len(examples.train):,} training pairs, {queries:,} validation queries, "
        f"{len(examples.product_text):,} products; {outcome.train.steps} steps at "
        f"{outcome.train.pairs_per_s} pairs/s; "
        f"{seconds:.0f} s in all"
    )
    timing = outcome.evaluation
    print(
        f"evaluation {timing['seconds']:.1f} s (the {timing['graph']} graph {timing['model_seconds']:.1f} s, "
        f"baselines {timing['baselines_seconds']:.1f} s{', cached' if timing['baselines_cached'] else ''}); "
        f"training {outcome.train.train_seconds:.1f} s; export {outcome.export['seconds']:.1f} s"
    )
    keys = [k for k in outcome.metrics if k != "queries" and isinstance(outcome.metrics[k], float)]
    rows = {
        "fine-tuned": outcome.metrics,
        **outcome.baselines,
        "fine-tuned int8": outcome.export["int8_metrics"],
    }
    print("| model | " + " | ".join(keys) + " |")
    print("| --- | " + " | ".join("---" for _ in keys) + " |")
    for name, metrics in rows.items():
        print(f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" if k in metrics else "-" for k in keys) + " |")
    print(
        f"ONNX parity max abs diff {outcome.export['parity_max_abs_diff']:.2e}; "
        f"int8 drop {outcome.export['int8_metric_drop']:+.4f} (servable: {outcome.export['int8_servable']})"
    )


if __name__ == "__main__":
    main()
