"""The training loop every task type shares: length-bucketed batches, AdamW with linear warmup, mixed
precision on CUDA, progress, checkpoints to resume from, and early stopping on the validation split; in
one process, or as one of several (``shard``, see services.trainer.finetune.shard)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from services.trainer.control import JobControl
from services.trainer.device import autocast_dtype
from services.trainer.finetune.base import Task
from services.trainer.finetune.checkpoint import Weights, load_checkpoint, save_checkpoint
from services.trainer.finetune.shard import Shard
from shared.training import Hyperparameters

BUCKET_BATCHES = 50  # batches per sorted bucket: similar lengths together, order still shuffled


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    steps: int
    epochs_run: float
    final_loss: float
    pairs_per_s: float
    train_seconds: float
    resumed_from_step: int
    processes: int = 1  # the processes that trained (torch.distributed's world size)
    checkpoint_bytes: int | None = None  # the size of the last checkpoint this run wrote, if any
    # with early stopping: patience, eval_every_steps, evaluations [{step, score}], best_step,
    # best_score, stopped_early and seconds (spent evaluating, left out of train_seconds and the
    # rates); the model returned is the best one evaluated
    early_stopping: dict[str, Any] | None = None


class _EarlyStopping:
    """Scores the model every ``every`` steps, counts evaluations without improvement, keeps the best
    weights; ``exhausted`` once ``patience`` evaluations in a row have not improved on the best. Only
    ``keep_weights`` keeps them: of several processes, the one that saves the model."""

    def __init__(self, patience: int, every: int, evaluate: Callable[[], float], keep_weights: bool = True):
        self.patience = patience
        self.every = every
        self.evaluate = evaluate
        self.keep_weights = keep_weights
        self.best = -math.inf
        self.best_step = 0
        self.stale = 0
        self.evaluations: list[dict[str, float]] = []
        self.weights: Weights | None = None
        self.seconds = 0.0  # spent evaluating in this run: not training time

    def restore(self, state: dict[str, Any], weights: Weights | None) -> None:
        self.best, self.stale = state["best"], state["stale"]
        self.best_step = state.get("best_step", 0)
        self.evaluations = list(state.get("evaluations", []))
        self.weights = weights if self.keep_weights else None

    def state(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "evaluations": self.evaluations}

    @property
    def exhausted(self) -> bool:
        return self.stale >= self.patience

    def step(self, task: Task, step: int, control: JobControl) -> None:
        began = time.monotonic()
        task.model.eval()
        score = float(self.evaluate())
        task.model.train()
        self.seconds += time.monotonic() - began
        self.evaluations.append({"step": step, "score": round(score, 6)})
        if score > self.best:
            self.best, self.best_step, self.stale = score, step, 0
            if self.keep_weights:
                self.weights = task.weights()
        else:
            self.stale += 1
        control.report(early_stopping={"best": self.best, "best_step": self.best_step, "stale": self.stale})

    def summary(self, stopped_early: bool) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "eval_every_steps": self.every,
            "evaluations": self.evaluations,
            "best_step": self.best_step,
            "best_score": self.best if self.evaluations else None,
            "stopped_early": stopped_early,
            "seconds": round(self.seconds, 2),
        }


def fit(
    task: Task,
    hp: Hyperparameters,
    device: torch.device,
    control: JobControl,
    work: Path,
    *,
    checkpoint_interval_s: float,
    evaluate: Callable[[], float] | None = None,
    shard: Shard | None = None,
) -> TrainResult:
    """Train ``task`` for ``hp``; resume from ``work/checkpoint`` when a previous run left one.

    With ``hp.early_stopping_patience``, ``evaluate`` (the validation metric, higher is better) runs every
    ``hp.eval_every_steps`` steps (default: once an epoch) and at the end; training stops once that many
    evaluations in a row have not improved on the best, and the best weights evaluated are kept.

    With a ``shard`` this process is one of several: each takes its share of every global batch of
    ``hp.batch_size``, the loss reported is the global batch's, only the leader (rank 0) writes
    checkpoints, and ``evaluate`` must give every process the leader's score."""
    if not task.examples:
        raise ValueError("the training split has no usable examples")
    leads = shard is None or shard.leader
    torch.manual_seed(hp.seed + (shard.rank if shard else 0))  # the processes' dropout masks differ
    task.model.to(device)
    lengths = task.lengths()
    steps_per_epoch = math.ceil(len(task.examples) / hp.batch_size)
    # max_steps is the number of steps, the epochs repeating as needed; without it, epochs says how many
    total = hp.max_steps if hp.max_steps is not None else steps_per_epoch * hp.epochs
    stopping = None
    if hp.early_stopping_patience is not None and evaluate is not None:
        stopping = _EarlyStopping(
            hp.early_stopping_patience, hp.eval_every_steps or steps_per_epoch, evaluate, keep_weights=leads
        )
    trainable = task.trainable()  # with an adapter, the adapter's weights (and a new head's) alone
    optimizer = torch.optim.AdamW(trainable, lr=hp.peak_learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * hp.warmup_ratio), total)
    amp_dtype = autocast_dtype(device, hp.mixed_precision)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, ema = 0, None
    state, best_weights = load_checkpoint(work)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, ema = state["step"], state["ema"]
        if stopping is not None:
            stopping.restore(state, best_weights)
    resumed_from = step
    control.report(phase="train", step=step, total_steps=total, resumed_from_step=resumed_from)
    task.model.train()
    started = time.monotonic()
    last_checkpoint = started
    pairs = 0
    checkpoint_bytes: int | None = None
    stopped_early = stopping is not None and stopping.exhausted
    while step < total and not stopped_early:
        epoch = step // steps_per_epoch
        batches = bucketed_batches(lengths, hp.batch_size, hp.seed + epoch)
        for position in range(step % steps_per_epoch, len(batches)):
            control.check()
            batch = [task.examples[i] for i in batches[position]]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                loss = task.loss(batch, device) if shard is None else shard.loss(task, batch, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            pairs += len(batch)
            value = float(loss.detach()) if shard is None else shard.mean(float(loss.detach()))
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            elapsed = time.monotonic() - started - (stopping.seconds if stopping else 0.0)
            rate = pairs / elapsed if elapsed > 0 else 0.0
            control.report(
                step=step,
                epoch=round(step / steps_per_epoch, 3),
                loss=round(ema, 5),
                pairs_per_s=round(rate, 1),
                eta_s=round((total - step) * hp.batch_size / rate, 1) if rate else None,
            )
            if stopping is not None and step % stopping.every == 0 and step < total:
                stopping.step(task, step, control)
                stopped_early = stopping.exhausted
            now = time.monotonic()
            due = now - last_checkpoint >= checkpoint_interval_s
            if shard is not None:
                due = shard.leaders(due)  # the leader's clock decides, so all processes agree
            if due and step < total and not stopped_early:
                if leads:  # the processes' models and optimisers are alike: the leader's stand for all
                    state = {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "best": stopping.best if stopping else -math.inf,
                        "stale": stopping.stale if stopping else 0,
                        "ema": ema,
                        **(stopping.state() if stopping else {}),
                    }
                    checkpoint_bytes = save_checkpoint(
                        work, task, state, stopping.weights if stopping else None
                    )
                if shard is not None:
                    # the others wait here for the leader's save, not inside the next step's all-reduce
                    shard.barrier()
                last_checkpoint = now
                control.report(checkpoint_step=step)
            if step >= total or stopped_early:
                break
    early_stopping = None
    if stopping is not None:
        if not stopped_early and (not stopping.evaluations or stopping.evaluations[-1]["step"] != step):
            stopping.step(task, step, control)  # the last step's model competes with the best so far
        if stopping.weights is not None and stopping.best_step != step:
            task.load_weights(stopping.weights)
        early_stopping = stopping.summary(stopped_early)
    task.model.eval()
    elapsed = time.monotonic() - started - (stopping.seconds if stopping else 0.0)
    return TrainResult(
        steps=step,
        epochs_run=round(step / steps_per_epoch, 3),
        final_loss=float(ema or 0.0),
        pairs_per_s=round(pairs / elapsed, 1) if elapsed > 0 else 0.0,
        train_seconds=round(elapsed, 2),
        resumed_from_step=resumed_from,
        processes=shard.world if shard else 1,
        checkpoint_bytes=checkpoint_bytes,
        early_stopping=early_stopping,
    )
