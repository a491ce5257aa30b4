"""sentence-transformers' own training loop on pairs bench/training.py hands over; run in the peers'
virtualenv (make peers), not RecForge's.

    .venv-peers/bin/python bench/peers/sentence_transformers_peer.py --pairs pairs.jsonl \\
        --model /path/to/all-MiniLM-L6-v2 --steps 60 --warmup-steps 3 --out trained/

``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (scale 20, cosine similarity), the
pairs as (anchor, positive), every core of the CPU. Writes the trained model to ``--out`` and prints a
JSON line: pairs per second over the steps after the warm-up, and the library's version."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import sentence_transformers
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    losses,
)
from transformers import TrainerCallback


class StepClock(TrainerCallback):  # type: ignore[misc]
    """The time at the end of the warm-up's last step and of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = 0.0
        self.ended = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        self.ended = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, required=True, help="JSON lines of [query, product text]")
    parser.add_argument("--model", required=True, help="The base model's folder")
    parser.add_argument("--steps", type=int, required=True, help="Timed steps, after the warm-up")
    parser.add_argument("--warmup-steps", type=int, default=3, help="Untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as the Trainer's bf16=True")
    parser.add_argument("--out", type=Path, required=True, help="Where the trained model is written")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.max_length
    clock = StepClock(args.warmup_steps)
    with tempfile.TemporaryDirectory() as scratch:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            max_steps=args.steps + args.warmup_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_ratio=0.1,
            seed=args.seed,
            bf16=args.bf16,
            save_strategy="no",
            report_to="none",
            logging_steps=10_000,
            use_cpu=True,
            dataloader_drop_last=True,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict(
                {"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]}
            ),
            loss=losses.MultipleNegativesRankingLoss(model),
            callbacks=[clock],
        )
        trainer.train()
    model.save(str(args.out))
    print(
        json.dumps(
            {
                "pairs_per_s": args.steps * args.batch_size / (clock.ended - clock.started),
                "version": sentence_transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
