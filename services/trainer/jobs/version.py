"""A registered model version that an evaluate, export or index job works on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import torch

from services.trainer.jobs.base import JobRun
from shared.artifacts import cpu_graph, product_graph, stored_files, unrooted, version_folder
from shared.datasets.examples import Examples
from shared.models import ModelVersion
from shared.models.enums import JobType
from shared.onnxmodel import OnnxTextModel


@dataclass
class VersionSpec:
    job_type: JobType  # the fine-tune that made it
    directory: Path  # its artifacts folder
    relative: Path  # the same, relative to the store's root (as the registry stores keys)
    artifacts: dict[str, dict[str, Any]]  # entries' paths relative to `directory`
    config: dict[str, Any]
    metrics: dict[str, Any]  # what an int8 graph is checked against (see version_spec)
    base_model: str
    device: torch.device
    int8_tolerance: float
    examples: Examples | None = None  # evaluate: the data to score on; export: its own training data
    catalog: dict[str, str] | None = None  # index: product id -> text
    catalog_version_id: uuid.UUID | None = None
    baselines_cache: Path | None = None
    vectors_cache: Path | None = None  # the zero-shot model's catalog embeddings (evaluation.VectorCache)

    @property
    def max_length(self) -> int:
        return int(self.config.get("max_length") or 128)

    @property
    def served_file(self) -> str:
        """The artifact CPU inference serves (shared.artifacts.cpu_graph)."""
        return cpu_graph(self.artifacts)

    @property
    def served_product_file(self) -> str:
        """The artifact that embeds products beside ``served_file``: itself, or a query-tower-only
        version's product graph (shared.artifacts.product_graph)."""
        return product_graph(self.artifacts, self.served_file)

    def onnx(self, name: str) -> OnnxTextModel:
        """The graph of one of the version's artifacts ("model", "model_int8", ...)."""
        return self.onnx_file(self.artifacts[name]["path"])

    def onnx_file(self, path: str) -> OnnxTextModel:
        """A graph in the version's folder, with the version's tokenizer."""
        return OnnxTextModel(self.directory / path, self.directory, max_length=self.max_length)


async def version_spec(job: JobRun, version: ModelVersion | None = None) -> VersionSpec:
    """The job's version (or ``version``), its files fetched into this machine's workspace (and
    checked) first."""
    version = version or job.claimed.model_version
    assert version is not None
    relative = version_folder(version.project_id, version.id)
    await anyio.to_thread.run_sync(job.objects.fetch_all, stored_files(version.artifacts))
    return VersionSpec(
        job_type=JobType(version.task_type),
        directory=job.objects.local(str(relative)),
        relative=relative,
        artifacts=unrooted(version.artifacts, relative),
        config=version.config,
        # the int8 check's reference: the fp32 graph's headline view where the version kept it (its own
        # metrics may be an int8 graph's), else its metrics (torch's, or a version from before)
        metrics=((version.compute or {}).get("export") or {}).get("fp32_metrics") or version.metrics,
        base_model=version.base_model,
        device=job.device,
        int8_tolerance=job.settings.int8_tolerance,
    )
