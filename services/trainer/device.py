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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, mixed_precision: bool | None) -> torch.dtype | None:
    """The dtype a fine-tune's forward passes autocast to, or None for float32 throughout.

    ``mixed_precision`` unset: on GPUs (bfloat16 where supported, else float16 with a gradient scaler),
    off on CPUs. Asked for on a CPU: bfloat16, fast where the CPU has it natively (``cpu_has_bf16``)."""
    if device.type == "cuda":
        if mixed_precision is False:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mixed_precision else None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the process's peak resident memory (and the GPU's peak allocation) afresh: on Linux
    by writing 5 to /proc/self/clear_refs, which resets VmHWM. Elsewhere the count runs on."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """The process's peak resident memory since ``reset_peak_memory`` (``rss_mb``; Linux) and, on a GPU,
    the peak memory torch allocated there (``cuda_mb``)."""
    found: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    found["rss_mb"] = round(int(line.split()[1]) / 1024, 1)  # given in kB
    except OSError:
        pass
    if device.type == "cuda":
        found["cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return found
