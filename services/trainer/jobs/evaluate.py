"""Evaluate jobs: score the graph a registered version serves on CPUs (int8 when its check passed, else
fp32), BM25 and the zero-shot base model on a dataset version's validation split."""

from __future__ import annotations

from typing import Any

from services.trainer import evaluation
from services.trainer.control import JobControl, in_thread
from services.trainer.finetune.base import resolve_base_model
from services.trainer.jobs.base import JobRun
from services.trainer.jobs.version import VersionSpec, version_spec
from services.trainer.store import VersionResult


def evaluate(spec: VersionSpec, control: JobControl) -> dict[str, Any]:
    assert spec.examples is not None
    control.report(phase="evaluate")
    labels = spec.config.get("labels")
    model_file = spec.served_file
    product_file = spec.served_product_file
    scorer = evaluation.onnx_scorer(
        spec.onnx(model_file),
        spec.job_type,
        labels,
        spec.onnx(product_file) if product_file != model_file else None,
        spec.vectors_cache,
    )
    metrics = evaluation.model_metrics(spec.job_type, spec.examples, scorer, control, "model")
    baselines = evaluation.baselines(
        spec.job_type,
        spec.examples,
        evaluation.zero_shot(
            resolve_base_model(spec.base_model), spec.device, spec.max_length, spec.vectors_cache
        ),
        control,
        spec.baselines_cache,
    )
    return {"model_file": model_file, "metrics": metrics, "baselines": baselines}


async def run(job: JobRun) -> VersionResult:
    spec = await version_spec(job)
    row, version = job.claimed.job, job.claimed.model_version
    assert version is not None
    spec.examples = await job.examples()
    spec.baselines_cache = evaluation.baselines_cache_file(
        job.settings.cache_dir, row.dataset_version_id, spec.base_model, spec.max_length, spec.job_type
    )
    spec.vectors_cache = job.settings.cache_dir
    found = await in_thread(job.control, evaluate, spec, job.control)
    found.update(model_version_id=str(version.id), dataset_version_id=str(row.dataset_version_id))
    warnings = evaluation.validation_warnings(spec.job_type, job.claimed.kind, found["metrics"])
    if warnings:
        found["warnings"] = warnings
    return VersionResult(result=found, progress=job.control.progress)
