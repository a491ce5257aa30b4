"""Where a job runs: the CUDA device when the job may use one and the worker has it, else the CPU."""

from __future__ import annotations

import os

import torch


def pick_device(requested: str | None) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the job asks for CUDA but this worker has no GPU")
    if requested in (None, "auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def setup_threads() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
