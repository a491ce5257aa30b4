"""What the distributed fine-tuning tests run inside torchrun's processes, and their data: a small
synthetic shop, a copy of a model with dropout off, a task that fails in one process, and a probe of
the bi-encoder's gathered negatives (``python -m torch.distributed.run ... -m tests.support.distributed``)."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from services.trainer.finetune.base import Task
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.cross_encoder import CrossEncoderTask
from shared.datasets.examples import Examples, Judged
from shared.models.enums import DatasetKind

KINDS = ["drill", "saw", "lamp", "hose", "ladder", "faucet", "heater", "fan"]
COLOURS = ["red", "black", "white", "green"]
MATERIALS = ["steel", "plastic", "brass"]
SYNONYMS = {"red": "crimson", "black": "dark", "white": "ivory", "green": "olive"}


def shop(train_pairs: int = 96, valid_queries: int = 24) -> Examples:
    """Products named by kind, colour and material; queries that name a kind and a colour, often in
    other words; graded judgments (the product 1.0, its kind in another colour 0.5, another kind 0.0)."""
    products = {
        f"p{i}": f"{colour} {material} {kind}"
        for i, (kind, colour, material) in enumerate(
            (k, c, m) for k in KINDS for c in COLOURS for m in MATERIALS
        )
    }
    ids = list(products)
    train = []
    for n in range(train_pairs):
        pid = ids[(n * 7) % len(ids)]
        colour, _, kind = products[pid].split()
        words = SYNONYMS[colour] if n % 2 else colour
        train.append((f"{words} {kind} {n % 5}", pid, 1.0 if n % 3 else 0.7))
    queries, candidates, grades = {}, {}, {}
    for n in range(valid_queries):
        pid = ids[(n * 11 + 3) % len(ids)]
        colour, _, kind = products[pid].split()
        qid = f"q{n}"
        queries[qid] = f"{SYNONYMS[colour]} {kind} for home"
        judged = {pid: 1.0}
        for other in ids:
            o_colour, _, o_kind = products[other].split()
            if len(judged) < 6 and other != pid:
                if o_kind == kind and o_colour != colour:
                    judged[other] = 0.5
                elif o_kind != kind and o_colour == colour and len(judged) < 4:
                    judged[other] = 0.0
        candidates[qid] = list(judged)
        grades[qid] = judged
    return Examples(
        kind=DatasetKind.relevance,
        product_text=products,
        train=train,
        valid=Judged(queries=queries, candidates=candidates, grades=grades),
        grade_range=(0.0, 1.0),
    )


def without_dropout(source: str, directory: Path) -> Path:
    """``source`` saved again with dropout off: one process and several then compute the same function
    of the same batches, and their losses differ only by the order floating-point sums are taken in."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(source, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def fails_in_process_1(model_dir: str) -> Task:
    """A task factory that process 1 of a distributed run cannot build."""
    if os.environ.get("RANK") == "1":
        raise ValueError("process 1 cannot build its task")
    examples = shop()
    return BiEncoderTask(model_dir, examples.train, examples.product_text, 16)


def probe() -> None:
    """Each process scores its share of global batches of 16, 5 and 1 pairs (an even share, an uneven
    one, a process left without pairs); rank 0 writes what it saw to ``argv[2]``, per batch size: the
    width of each process's logits (in-batch negatives only, and with mined ones), the mean over the
    processes of their shard losses, the loss of the whole batch in one process, and the mean of losses
    that saw only their own share. The bi-encoder excludes products, corrects for popularity and draws
    mined negatives from pools of 0 to 3 products, so the processes' columns differ in number."""
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    examples = shop()
    device = torch.device("cpu")
    torch.manual_seed(0)
    queries = list(dict.fromkeys(q for q, _, _ in examples.train))
    exclude = {q: {f"p{(i * 5) % 96}"} for i, q in enumerate(queries)}
    bi = BiEncoderTask(
        model_dir,
        examples.train,
        examples.product_text,
        32,
        exclude=exclude,
        hard_negatives=2,
        popularity_correction=True,
    )
    titles = list(examples.product_text.values())
    bi.use_negatives({q: titles[i % 7 : i % 7 + i % 4] for i, q in enumerate(queries)})
    plain = BiEncoderTask(model_dir, examples.train, examples.product_text, 32)
    cross = CrossEncoderTask(model_dir, examples.train, examples.product_text, 32)
    for task in (bi, plain, cross):
        task.model.eval()  # dropout off: every process computes the same function
    report: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for size, batch in ((16, bi.examples[:16]), (5, bi.examples[:5]), (1, bi.examples[3:4])):
            seen: dict[str, Any] = {}
            for name, task in (("plain", plain), ("mined", bi)):
                bi.rng = random.Random(size)
                scored, _ = task.shard_scores(batch, device, rank, world)
                widths = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
                dist.all_gather(widths, torch.tensor([scored.logits.shape[1]]))
                seen[f"{name}_widths"] = [int(w.item()) for w in widths]
            for name, task in (("bi", bi), ("cross", cross)):
                bi.rng = random.Random(size)  # the same mined negatives drawn each time
                shard = task.shard_loss(batch, device, rank, world)
                dist.all_reduce(shard)
                seen[f"{name}_sharded"] = shard.item() / world
                bi.rng = random.Random(size)
                seen[f"{name}_whole"] = task.loss(batch, device).item()
                share = batch[rank::world]
                alone = task.loss(share, device) if share else torch.zeros(())
                dist.all_reduce(alone)
                seen[f"{name}_alone"] = alone.item() / world
            report[str(size)] = seen
    if rank == 0:
        out.write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    probe()
