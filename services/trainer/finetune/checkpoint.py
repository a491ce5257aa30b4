"""Checkpoints of a running fine-tune under its work folder, so another run resumes where it stopped.

A checkpoint is a folder: the model (``model/``), the optimiser and scheduler state (``state.pt``) and,
with early stopping, the best weights so far (``best.pt``). It is written beside the last one and
swapped in by two renames; a run killed between them leaves ``checkpoint.old``, which is taken back."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from services.trainer import checkpoint_store
from services.trainer.finetune.base import Task
from shared.files import fsync_dir, fsync_tree

Weights = dict[str, torch.Tensor]


def save_checkpoint(work: Path, task: Task, state: dict[str, Any], best: Weights | None = None) -> int:
    """Write the checkpoint; its size in bytes (with an adapter, the adapter and its optimiser state)."""
    recover_checkpoint(work)  # whatever a killed run left half-swapped is settled first
    staging = work / "checkpoint.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    task.save(staging / "model")
    torch.save(state, staging / "state.pt")
    if best is not None:
        torch.save(best, staging / "best.pt")
    fsync_tree(staging)  # on disk before it is renamed into place
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    final = work / "checkpoint"
    old = work / "checkpoint.old"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    fsync_dir(work)
    shutil.rmtree(old, ignore_errors=True)
    checkpoint_store.upload(work)  # a work folder attached to an object store: a copy there too
    return size


def recover_checkpoint(work: Path) -> None:
    """Settle what a worker killed inside save_checkpoint left: only checkpoint.old (killed between the
    two renames) is taken back; checkpoint and checkpoint.old both (killed before the old one was
    removed) keep the newer one."""
    final, old = work / "checkpoint", work / "checkpoint.old"
    if not final.exists() and (old / "state.pt").exists():
        old.rename(final)
    elif final.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_model(work: Path) -> Path | None:
    """The model folder of the last complete checkpoint, if any."""
    recover_checkpoint(work)
    model = work / "checkpoint" / "model"
    return model if (work / "checkpoint" / "state.pt").exists() else None


def load_checkpoint(work: Path) -> tuple[dict[str, Any] | None, Weights | None]:
    """The training state of the last checkpoint and its best weights (either may be None)."""
    recover_checkpoint(work)
    folder = work / "checkpoint"
    if not (folder / "state.pt").exists():
        return None, None
    state: dict[str, Any] = torch.load(folder / "state.pt", weights_only=True)
    best: Weights | None = None
    if (folder / "best.pt").exists():
        best = torch.load(folder / "best.pt", weights_only=True)
    return state, best
