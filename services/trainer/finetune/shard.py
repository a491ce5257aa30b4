"""One process's share of a distributed fine-tune: what the shared training loop asks of torch.distributed
when several processes train one model (services.trainer.finetune.distributed starts them).

Every process builds the same global batches; each computes its part of the batch's loss (``Task.
shard_loss``) through DistributedDataParallel, which averages the gradients in backward, so every process
takes the same optimiser step that one process would take on the whole batch. Rank 0 leads: it reports,
evaluates and writes checkpoints, and the other processes follow its decisions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from services.trainer.finetune.base import Task


class Shard:
    def __init__(self, ddp: DistributedDataParallel, device: torch.device):
        self.ddp = ddp
        self.device = device
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def loss(self, task: Task, batch: list[Any], device: torch.device) -> torch.Tensor:
        """This process's part of the loss of the global ``batch``. The task's forward passes go through
        the DDP wrapper, whose hooks average the gradients in backward; everything else (evaluation,
        checkpoints, saving) keeps using the bare model."""
        model = task.model
        task.model = self.ddp
        try:
            return task.shard_loss(batch, device, self.rank, self.world)
        finally:
            task.model = model

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes: with equal shares, the global batch's loss."""
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item()) / self.world

    def leaders(self, decision: bool) -> bool:
        """Rank 0's ``decision`` on every process: a decision on the clock (checkpoint now?) may differ
        between them, and all of them must take the same branch."""
        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def scored_by_leader(self, evaluate: Callable[[], float] | None) -> Callable[[], float]:
        """A score rank 0 computes with ``evaluate`` (the other processes may pass None) and every process
        reads, so early stopping decides alike everywhere."""
        if self.leader and evaluate is None:
            raise ValueError("rank 0 evaluates for every process: it needs the evaluate function")

        def score() -> float:
            local = evaluate() if self.leader and evaluate is not None else 0.0
            value = torch.tensor([local], dtype=torch.float64, device=self.device)
            dist.broadcast(value, 0)
            return float(value.item())

        return score

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()
