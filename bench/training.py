"""Fine-tuning throughput on this machine: RecForge's bi-encoder loop against a naive loop, or on one
process against several.

    python bench/training.py ../shared/data/homedepot/relevance_dev.csv --steps 30
    python bench/training.py ../shared/data/homedepot/relevance_dev.csv --steps 30 --processes 2

Both train all-MiniLM-L6-v2 with in-batch negatives on the same Home Depot training pairs, batch 32,
on the CPU with every core. The naive loop pads every text to 64 tokens and tokenizes inside each
step; RecForge's tokenizes once, batches texts of similar length and pads each batch to its longest.
Prints pairs per second of each (the first steps are warm-up and not timed).

With ``--processes N`` RecForge's loop runs on one process and then on N (torchrun, gloo, the cores
shared out, the batch the global one, negatives gathered from every process), on the same pairs with
the same seed. Each line gives the pairs per second of training (rank 0's clock, warm-up steps
included, for both) and the seconds of the whole run, the processes' start included."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from services.trainer.control import JobControl
from services.trainer.device import setup_threads
from services.trainer.finetune.base import mean_pool, resolve_base_model
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.distributed import fit_distributed
from services.trainer.finetune.loop import fit
from shared.datasets import storage
from shared.datasets.examples import Examples, load
from shared.datasets.formats import DataFormat, ImportOptions
from shared.datasets.pipeline import prepare
from shared.datasets.splits import SplitSpec
from shared.models.enums import DatasetKind
from shared.storage import folder_store
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters

WARMUP = 3


def naive(pairs: list[tuple[str, str]], steps: int, batch: int, model_dir: str) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    done, started = 0, 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            started = time.perf_counter()
        chunk = pairs[(step * batch) % len(pairs) :][:batch]
        queries = tokenizer(
            [q for q, _ in chunk], padding="max_length", truncation=True, max_length=64, return_tensors="pt"
        )
        docs = tokenizer(
            [d for _, d in chunk], padding="max_length", truncation=True, max_length=64, return_tensors="pt"
        )
        q = mean_pool(model(**queries).last_hidden_state, queries["attention_mask"])
        d = mean_pool(model(**docs).last_hidden_state, docs["attention_mask"])
        loss = nn.functional.cross_entropy(q @ d.T * 20, torch.arange(len(chunk)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= WARMUP:
            done += len(chunk)
    return done / (time.perf_counter() - started)


def ours(task: BiEncoderTask, steps: int, batch: int) -> float:
    hp = Hyperparameters(max_steps=steps + WARMUP, batch_size=batch, learning_rate=2e-5, max_length=64)
    with tempfile.TemporaryDirectory() as work:
        result = fit(task, hp, torch.device("cpu"), JobControl(), Path(work), checkpoint_interval_s=1e9)
    return result.pairs_per_s


def on_processes(
    examples: Examples, model_dir: str, steps: int, batch: int, processes: int
) -> tuple[float, float]:
    """Pairs per second of training on ``processes`` processes, and the seconds the run took in all."""
    hp = Hyperparameters(
        max_steps=steps + WARMUP, batch_size=batch, learning_rate=2e-5, max_length=64, processes=processes
    )
    build = functools.partial(
        BiEncoderTask, examples=examples.train, product_text=examples.product_text, max_length=64
    )
    task = build(model_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        if processes == 1:
            result = fit(task, hp, torch.device("cpu"), JobControl(), Path(work), checkpoint_interval_s=1e9)
        else:
            result = fit_distributed(
                task,
                build,
                model_dir,
                hp,
                torch.device("cpu"),
                JobControl(),
                Path(work),
                checkpoint_interval_s=1e9,
            )
    return result.pairs_per_s, time.perf_counter() - started


def compare_processes(examples: Examples, model_dir: str, steps: int, batch: int, processes: int) -> None:
    alone, alone_s = on_processes(examples, model_dir, steps, batch, 1)
    print(f"RecForge loop, 1 process: {alone:.1f} pairs/s ({alone_s:.1f} s in all)")
    shared, shared_s = on_processes(examples, model_dir, steps, batch, processes)
    print(
        f"RecForge loop, {processes} processes (torchrun, gloo): {shared:.1f} pairs/s "
        f"({shared / alone:.2f}x; {shared_s:.1f} s in all, the processes' start included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="Home Depot relevance CSV")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="compare RecForge's loop on 1 and on N processes instead of against the naive loop",
    )
    args = parser.parse_args()
    setup_threads()
    prepared = prepare([args.path], ImportOptions(DataFormat.homedepot), SplitSpec())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = storage.write_version(folder_store(Path(tmp)), "v", prepared.tables)
        examples = load(folder_store(Path(tmp)), DatasetKind.relevance, manifest, None)
    model_dir = resolve_base_model(DEFAULT_BASE_MODEL)
    task = BiEncoderTask(model_dir, examples.train, examples.product_text, 64)
    pairs = [(q, t) for q, t, _ in task.examples]
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{len(pairs):,} training pairs"
    )
    if args.processes is not None:
        compare_processes(examples, model_dir, args.steps, args.batch_size, args.processes)
        return
    slow = naive(pairs, args.steps, args.batch_size, model_dir)
    print(f"naive loop (pad to 64, tokenize in the step): {slow:.1f} pairs/s")
    fast = ours(task, args.steps, args.batch_size)
    print(
        "RecForge loop (pre-tokenized, length-bucketed, dynamic padding): "
        f"{fast:.1f} pairs/s ({fast / slow:.1f}x)"
    )


if __name__ == "__main__":
    main()
