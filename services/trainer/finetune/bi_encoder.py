"""Bi-encoders: query and product embeddings for retrieval, learned with in-batch (and mined) negatives."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.nn.functional as distributed_nn
from torch import nn
from transformers import AutoModel, AutoTokenizer

from services.trainer.control import JobControl
from services.trainer.finetune.base import PairTask, load_model, loader, mean_pool
from shared.files import write_text_atomic
from shared.training import Hyperparameters

log = logging.getLogger("recforge.trainer")

MINE_POOL = 30  # the nearest non-positive products a query's hard negatives are drawn from
MINE_BATCH = 128


class BiEncoderTask(PairTask):
    """Query and product embeddings (mean pooled, normalised): in-batch negatives, each pair's
    loss weighted by its graded relevance; pairs below half the grade scale are not positives.

    With ``hard_negatives`` each pair also brings that many products mined once, before training, from
    the model as it starts: drawn from the MINE_POOL products nearest the query that are neither its
    positives nor in its ``exclude`` set. A product in a query's ``exclude`` set (on sequence data: the
    history) is never its negative, mined or in the batch.

    With ``popularity_correction`` every column's logit is lowered by the log of its product's share of
    the training positives (add-one smoothed over the catalog): in-batch negatives are drawn as often as
    products are positives, and without the correction the model learns to push popular products down
    for it (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019). Serving scores are
    uncorrected."""

    scale = 20.0

    def __init__(
        self,
        model_dir: str,
        examples: list[tuple[str, str, float]],
        product_text: dict[str, str],
        max_length: int,
        *,
        exclude: dict[str, set[str]] | None = None,
        hard_negatives: int = 0,
        popularity_correction: bool = False,
        seed: int = 42,
        base_dir: str | None = None,
        adapter: Hyperparameters | None = None,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_model(loader(AutoModel), model_dir, base_dir, adapter, uses_pooler=False)
        # products embedded by the base model (the adapter off, no gradient): see adapters.py
        self.query_tower_only = bool(adapter and adapter.adapter and adapter.query_tower_only)
        self.product_text = product_text
        positives = [(q, product_text[p], g) for q, p, g in examples if g >= 0.5]
        self.log_share: dict[str, float] = {}
        if popularity_correction:
            counts = Counter(text for _, text, _ in positives)
            catalog = set(product_text.values())
            total = len(positives) + len(catalog)
            self.log_share = {text: math.log((counts[text] + 1) / total) for text in catalog}
        self.exclude = {
            q: {product_text[p] for p in ids if p in product_text} for q, ids in (exclude or {}).items()
        }
        self.hard_negatives = hard_negatives
        self.negatives: dict[str, list[str]] = {}
        self.rng = random.Random(seed)
        self._index(positives, max_length)

    def encode(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """Queries' embeddings (and products', unless only the query tower trains)."""
        batch = self.texts.batch(texts, device)
        hidden = self.model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def encode_products(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        if not self.query_tower_only:
            return self.encode(texts, device)
        peft_model = getattr(self.model, "module", self.model)  # under DistributedDataParallel: its module
        with peft_model.disable_adapter(), torch.no_grad():
            return self.encode(texts, device)

    def mine(self, device: torch.device, control: JobControl, cache: Path) -> None:
        """Each query's candidate hard negatives, from the model as it is now; kept in ``cache`` so a
        resumed job draws from the same ones (its model has trained since)."""
        if not self.hard_negatives:
            return
        positives: dict[str, set[str]] = {}
        for query, text, _ in self.examples:
            positives.setdefault(query, set()).add(text)
        queries = list(positives)
        saved = _read_negatives(cache, len(queries))
        if saved is not None:
            titles, picks = saved
            self.texts.add(titles)
        else:
            titles = list(dict.fromkeys(self.product_text.values()))
            self.texts.add(titles)
            skip = {q: positives[q] | self.exclude.get(q, set()) for q in queries}
            picks = self._nearest(queries, titles, skip, device, control)
            write_text_atomic(cache, json.dumps({"titles": titles, "negatives": picks}))
        self.negatives = {q: [titles[i] for i in row] for q, row in zip(queries, picks, strict=True)}

    def use_negatives(self, negatives: dict[str, list[str]]) -> None:
        """Take the negatives ``mine`` found in another process of the same job."""
        self.texts.add([text for pool in negatives.values() for text in pool])
        self.negatives = negatives

    @torch.no_grad()
    def _nearest(
        self,
        queries: list[str],
        titles: list[str],
        skip: dict[str, set[str]],
        device: torch.device,
        control: JobControl,
    ) -> list[list[int]]:
        """Each query's MINE_POOL nearest titles (indices) that are not in its ``skip`` set."""
        self.model.to(device).eval()
        total = len(titles) + len(queries)
        vectors = []
        for start in range(0, len(titles), MINE_BATCH):
            control.check()
            vectors.append(self.encode_products(titles[start : start + MINE_BATCH], device).float())
            control.report(phase="mine_negatives", done=start + len(vectors[-1]), total=total)
        products = torch.cat(vectors)
        depth = min(len(titles), MINE_POOL + max(len(texts) for texts in skip.values()))
        picks: list[list[int]] = []
        for start in range(0, len(queries), MINE_BATCH):
            control.check()
            chunk = queries[start : start + MINE_BATCH]
            nearest = (self.encode(chunk, device).float() @ products.T).topk(depth, dim=1).indices
            for query, row in zip(chunk, nearest.tolist(), strict=True):
                picks.append([i for i in row if titles[i] not in skip[query]][:MINE_POOL])
            control.report(phase="mine_negatives", done=len(titles) + len(picks), total=total)
        self.model.train()
        return picks

    def loss(self, batch: list[tuple[str, str, float]], device: torch.device) -> torch.Tensor:
        drawn = self._draw_negatives(batch)
        queries = self.encode([q for q, _, _ in batch], device)
        candidates = [t for _, t, _ in batch] + [n for negatives in drawn for n in negatives]
        products = self.encode_products(candidates, device)
        scored = self._score(batch, queries, products, candidates, list(range(len(batch))))
        loss: torch.Tensor = scored.weighted_sum() / scored.weights.sum()
        return loss

    def shard_loss(
        self, batch: list[tuple[str, str, float]], device: torch.device, rank: int, world: int
    ) -> torch.Tensor:
        """Process ``rank``'s part of the global ``batch``'s loss, its in-batch negatives gathered from
        every process: the mean over the processes is ``loss(batch)``."""
        scored, total = self.shard_scores(batch, device, rank, world)
        loss: torch.Tensor = scored.weighted_sum() * world / total
        return loss

    def shard_scores(
        self, batch: list[tuple[str, str, float]], device: torch.device, rank: int, world: int
    ) -> tuple[InBatch, torch.Tensor]:
        """Process ``rank``'s queries (every ``world``-th pair of the global ``batch``) scored against every
        process's products and mined negatives, gathered with a differentiable all-gather so the
        gradient reaches the process that embedded them; and the global batch's total grade.

        Each process draws the mined negatives of the whole batch, in order, as one process would, and
        keeps its own pairs'. Processes embed different numbers of columns (mined pools differ in size,
        an epoch's last batch may not share evenly), so each pads its columns with zero rows to the widest
        and the padding is never a negative. A process the last batch leaves without pairs embeds the
        first pair with no weight, its column dead: every process runs the model every step."""
        drawn = self._draw_negatives(batch)
        shares = [list(range(r, len(batch), world)) for r in range(world)]
        columns = [
            ([batch[i][1] for i in rows] if rows else [batch[0][1]]) + [n for i in rows for n in drawn[i]]
            for rows in shares
        ]
        width = max(len(c) for c in columns)
        texts: list[str] = []
        dead: list[bool] = []
        for rows, own in zip(shares, columns, strict=True):
            texts += own + [""] * (width - len(own))
            dead += [not rows] + [False] * (len(own) - 1) + [True] * (width - len(own))
        pairs = [batch[i] for i in shares[rank]] or [(batch[0][0], batch[0][1], 0.0)]
        queries = self.encode([q for q, _, _ in pairs], device)
        products = self.encode_products(columns[rank], device).float()  # gathered in float32 under autocast
        products = torch.cat([products, products.new_zeros(width - len(products), products.shape[1])])
        gathered = torch.cat(distributed_nn.all_gather(products))
        targets = [rank * width + k for k in range(len(pairs))]
        scored = self._score(pairs, queries, gathered, texts, targets, dead)
        total = torch.tensor([g for _, _, g in batch], dtype=scored.weights.dtype, device=device).sum()
        return scored, total

    def _draw_negatives(self, batch: list[tuple[str, str, float]]) -> list[list[str]]:
        """Each pair's mined negatives for this step (none without ``hard_negatives``), drawn in order."""
        if not self.hard_negatives:
            return [[] for _ in batch]
        drawn = []
        for query, _, _ in batch:
            pool = self.negatives.get(query, [])
            drawn.append(self.rng.sample(pool, min(self.hard_negatives, len(pool))))
        return drawn

    def _score(
        self,
        pairs: list[tuple[str, str, float]],
        queries: torch.Tensor,
        products: torch.Tensor,
        columns: list[str],
        targets: list[int],
        dead: list[bool] | None = None,
    ) -> InBatch:
        """Each pair's query against every column (product text); its own product is column
        ``targets[i]``. A ``dead`` column (padding) is no one's negative."""
        device = queries.device
        dead = dead or [False] * len(columns)
        with torch.autocast(device.type, enabled=False):  # similarities in float32 under any autocast
            logits = queries.float() @ products.float().T * self.scale
        # never a negative: the pair's own product under another column (the same product twice in a
        # batch) or a product the query excludes
        blocked = torch.tensor(
            [
                [
                    j != target and (dead[j] or c == text or c in self.exclude.get(query, ()))
                    for j, c in enumerate(columns)
                ]
                for (query, text, _), target in zip(pairs, targets, strict=True)
            ],
            device=device,
        )
        if self.log_share:
            logits = logits - torch.tensor(
                [0.0 if dead[j] else self.log_share[c] for j, c in enumerate(columns)],
                dtype=logits.dtype,
                device=device,
            )
        logits = logits.masked_fill(blocked, -1e4)
        weights = torch.tensor([g for _, _, g in pairs], dtype=logits.dtype, device=device)
        return InBatch(logits, torch.tensor(targets, device=device), weights)


@dataclass
class InBatch:
    """Queries scored against a batch's columns: ``logits`` (queries x columns, blocked entries at -1e4),
    each query's own column (``targets``) and its grade (``weights``)."""

    logits: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    def weighted_sum(self) -> torch.Tensor:
        per_pair = nn.functional.cross_entropy(self.logits, self.targets, reduction="none")
        return (per_pair * self.weights).sum()


def _read_negatives(cache: Path, queries: int) -> tuple[list[str], list[list[int]]] | None:
    """The mined negatives a previous run of the job kept, if the file is whole and fits the data."""
    try:
        saved = json.loads(cache.read_text())
        titles, picks = saved["titles"], saved["negatives"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("mined negatives unreadable; mining them again", extra={"path": str(cache)})
        return None
    if len(picks) != queries:
        return None
    return titles, picks
