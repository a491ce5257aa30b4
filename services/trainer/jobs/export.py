"""Export jobs: rebuild a registered version's int8 graph for this machine's CPU and its fp16 graph from
the fp32 one, check them, and check the int8 graph's metric on the version's own validation split.

The served graphs are never touched: the new ones are written under new names, the registry is pointed
at them when the job ends, and only then are the old ones removed (or the new ones, if it fails)."""

from __future__ import annotations

from typing import Any

from services.trainer import evaluation
from services.trainer.control import JobControl, in_thread
from services.trainer.export import onnx_task, parity_examples, rebuild_variants
from services.trainer.jobs.base import JobRun
from services.trainer.jobs.version import VersionSpec, version_spec
from services.trainer.store import VersionResult
from shared.artifacts import rooted


def rebuild(spec: VersionSpec, control: JobControl) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the export's report, the rebuilt files' entries relative to the version's folder). The new
    graphs are removed again if their checks do not finish."""
    assert spec.examples is not None
    control.report(phase="export")
    rebuilt = rebuild_variants(
        spec.directory,
        model_file=spec.artifacts["model"]["path"],
        task=onnx_task(spec.job_type),
        examples=parity_examples(spec.job_type, spec.examples),
        max_length=spec.max_length,
    )
    try:
        control.check()
        int8 = spec.onnx_file(rebuilt.files["model_int8"]["path"])
        # a query-tower-only version's products stay with its product graph (the base model's), which
        # serves beside the new query graph
        products = spec.onnx("product_model_int8") if "product_model_int8" in spec.artifacts else None
        check = evaluation.int8_check(
            spec.job_type,
            spec.examples,
            int8,
            spec.metrics,
            spec.config.get("labels"),
            spec.int8_tolerance,
            control,
            products,
            spec.vectors_cache,
        )
    except BaseException:
        for entry in rebuilt.files.values():
            (spec.directory / entry["path"]).unlink(missing_ok=True)
        raise
    files = {name: {**entry, "servable": True} for name, entry in rebuilt.files.items()}
    files["model_int8"]["servable"] = check["int8_servable"]
    info = {
        "int8_max_abs_diff": rebuilt.int8_max_abs_diff,
        "int8_mean_cosine": rebuilt.int8_mean_cosine,
        "fp16_max_abs_diff": rebuilt.fp16_max_abs_diff,
        "int8_preset": rebuilt.int8_preset,
        **check,
        "seconds": rebuilt.seconds,
    }
    return info, files


async def run(job: JobRun) -> VersionResult:
    spec = await version_spec(job)
    spec.examples = await job.examples()
    info, files = await in_thread(job.control, rebuild, spec, job.control)
    replaced = [
        spec.directory / spec.artifacts[name]["path"]
        for name in files
        if name in spec.artifacts and spec.artifacts[name]["path"] != files[name]["path"]
    ]
    staged = tuple(spec.directory / entry["path"] for entry in files.values())
    rooted_files = rooted(files, spec.relative)
    version = job.claimed.model_version
    assert version is not None
    result = {"model_version_id": str(version.id), **info, "files": rooted_files}
    return VersionResult(
        result=result,
        progress=job.control.progress,
        artifacts=rooted_files,
        rebuild=info,
        staged=staged,
        obsolete=tuple(replaced),
    )
