"""Fine-tunes: train, score the baselines on the validation split, export to ONNX (+int8), score the graph
that will be served (int8 when it keeps the model's quality), and hand the result over as a new model
version."""

from __future__ import annotations

import functools
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import torch

from services.trainer import checkpoint_store, evaluation
from services.trainer.control import JobControl, StopReason, in_thread
from services.trainer.device import peak_memory_mb, reset_peak_memory
from services.trainer.export import INT8_FILE, MODEL_FILE, export_model, onnx_task, parity_examples
from services.trainer.finetune.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from services.trainer.finetune.base import Task, resolve_base_model
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.checkpoint import checkpoint_model
from services.trainer.finetune.classifier import ClassifierTask
from services.trainer.finetune.cross_encoder import CrossEncoderTask
from services.trainer.finetune.distributed import MultiNode, fit_distributed, multi_node
from services.trainer.finetune.loop import TrainResult, fit, seed_everything
from services.trainer.jobs.base import JobRun
from services.trainer.provenance import git_state, library_versions
from services.trainer.store import NewVersion
from shared.artifacts import PRODUCT_FOLDER, rooted, version_folder
from shared.datasets.examples import Examples
from shared.files import file_entry
from shared.models.enums import DatasetKind, JobType
from shared.onnxmodel import OnnxTextModel
from shared.training import DEFAULT_LORA_TARGETS, Hyperparameters, base_model_problem


@dataclass
class FineTuneSpec:
    job_type: JobType
    base_model: str
    hyperparameters: Hyperparameters
    examples: Examples
    device: torch.device
    work_dir: Path  # checkpoints; kept across a worker's death, removed when the job ends
    out_dir: Path  # the model version's artifacts
    checkpoint_interval_s: float
    int8_tolerance: float
    baselines_cache: Path | None = None
    vectors_cache: Path | None = None  # where the zero-shot model's catalog embeddings are kept
    multi_node: MultiNode | None = None  # with hp.nodes > 1: the rendezvous and store for the other nodes


@dataclass
class FineTuned:
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    config: dict[str, Any]
    train: TrainResult
    export: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)  # what scoring took, and on which graph
    adapter: dict[str, Any] | None = None  # with an adapter: its settings and files (for PEFT users)


def train_task(spec: FineTuneSpec, model_dir: str) -> Task:
    """The task the job type learns, starting from ``model_dir``."""
    hp = spec.hyperparameters
    ex = spec.examples
    # with an adapter, the model is the base model's, and model_dir (a checkpoint) holds the adapter
    base_dir = resolve_base_model(spec.base_model)
    if spec.job_type == JobType.bi_encoder:
        return BiEncoderTask(
            model_dir,
            ex.train,
            ex.product_text,
            hp.max_length,
            exclude=ex.train_exclude,
            hard_negatives=hp.hard_negatives,
            popularity_correction=(
                hp.popularity_correction
                if hp.popularity_correction is not None
                else ex.kind == DatasetKind.sequences
            ),
            seed=hp.seed,
            base_dir=base_dir,
            adapter=hp,
        )
    if spec.job_type == JobType.cross_encoder:
        return CrossEncoderTask(
            model_dir, ex.train, ex.product_text, hp.max_length, base_dir=base_dir, adapter=hp
        )
    return ClassifierTask(
        model_dir, ex.texts.get("train", []), ex.labels, hp.max_length, base_dir=base_dir, adapter=hp
    )


def train_and_export(spec: FineTuneSpec, control: JobControl) -> FineTuned:
    """Train, evaluate, export. Blocking: the worker runs it in a thread. Raises JobCancelled."""
    seed_everything(spec.hyperparameters.seed)
    hp = spec.hyperparameters
    if hp.early_stopping_patience is not None:
        evaluation.require_validation_split(spec.job_type, spec.examples)
    base_dir = resolve_base_model(spec.base_model)
    resume = checkpoint_model(spec.work_dir)
    model_dir = str(resume) if resume else base_dir
    task = train_task(spec, model_dir)
    if isinstance(task, BiEncoderTask):
        task.mine(spec.device, control, spec.work_dir / "negatives.json")
    scorer = evaluation.torch_scorer(task, spec.device, hp.max_length)
    # with early stopping: the validation metric of a task's model, in this process or in each of torchrun's
    validate = (
        functools.partial(evaluation.task_validation_score, spec.job_type, spec.examples, hp.max_length)
        if hp.early_stopping_patience is not None
        else None
    )
    if hp.processes * hp.nodes > 1:  # torchrun's processes train; the weights come back into task
        train = fit_distributed(
            task,
            functools.partial(train_task, replace(spec, multi_node=None)),  # what the processes need
            model_dir,
            hp,
            spec.device,
            control,
            spec.work_dir,
            checkpoint_interval_s=spec.checkpoint_interval_s,
            validate=validate,
            multi_node=replace(spec.multi_node, resumed=resume is not None) if spec.multi_node else None,
        )
    else:
        train = fit(
            task,
            hp,
            spec.device,
            control,
            spec.work_dir,
            checkpoint_interval_s=spec.checkpoint_interval_s,
            evaluate=functools.partial(validate, task, spec.device, control) if validate else None,
        )
    if train.early_stopping is not None:
        train.early_stopping["metric"] = evaluation.HEADLINE[spec.job_type]
    control.check()
    on_gpu = spec.device.type == "cuda"
    evaluation_started = time.monotonic()
    if on_gpu:  # the GPU embeds the catalog faster in torch than onnxruntime's CPU provider would
        control.report(phase="evaluate")
        metrics = evaluation.model_metrics(spec.job_type, spec.examples, scorer, control, "model")
    model_seconds = time.monotonic() - evaluation_started
    baselines_started = time.monotonic()
    baselines_cached = spec.baselines_cache is not None and spec.baselines_cache.is_file()
    baselines = evaluation.baselines(
        spec.job_type,
        spec.examples,
        evaluation.zero_shot(base_dir, spec.device, hp.max_length, spec.vectors_cache),
        control,
        spec.baselines_cache,
    )
    baselines_seconds = time.monotonic() - baselines_started
    control.check()
    control.report(phase="export")
    trained = spec.work_dir / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    task.save_merged(trained)  # an adapter merged into the weights: the graphs serve as any other
    started = time.monotonic()
    exported = export_model(
        trained,
        spec.out_dir,
        task=onnx_task(spec.job_type),
        examples=parity_examples(spec.job_type, spec.examples),
        max_length=hp.max_length,
        fp16=on_gpu,
    )
    tower = isinstance(task, BiEncoderTask) and task.query_tower_only
    product_files = _product_tower(spec, base_dir) if tower else {}
    export_seconds = time.monotonic() - started
    adapter = _save_adapter(task, hp, spec.out_dir / "adapter") if hp.adapter else None
    control.check()
    labels = spec.examples.labels if spec.job_type == JobType.classifier else None

    def graph(path: str) -> OnnxTextModel:
        return OnnxTextModel(spec.out_dir / path, spec.out_dir, max_length=hp.max_length)

    int8 = graph(INT8_FILE)
    cache = spec.vectors_cache
    started = time.monotonic()
    if on_gpu:
        check = evaluation.int8_check(
            spec.job_type, spec.examples, int8, metrics, labels, spec.int8_tolerance, control,
            graph(product_files["product_model_int8"]["path"]) if tower else None, cache,
        )  # fmt: skip
        check["metrics_graph"] = "torch"
    else:
        products = (
            (
                graph(product_files["product_model"]["path"]),
                graph(product_files["product_model_int8"]["path"]),
            )
            if tower
            else None
        )
        metrics, check = evaluation.served_metrics(
            spec.job_type, spec.examples, graph(MODEL_FILE), int8, labels, spec.int8_tolerance, control,
            products, cache,
        )  # fmt: skip
    model_seconds += time.monotonic() - started
    artifacts = {name: {**entry, "servable": True} for name, entry in exported.files.items()}
    artifacts["model_int8"]["servable"] = check["int8_servable"]
    for name, entry in product_files.items():  # served beside the query graph of the same precision
        artifacts[name] = {**entry, "servable": artifacts[name.removeprefix("product_")]["servable"]}
    config = {
        "max_length": hp.max_length,
        "pooling": "mean" if spec.job_type == JobType.bi_encoder else None,
        "normalize": spec.job_type == JobType.bi_encoder,
        "labels": labels,
        "headline_metric": evaluation.HEADLINE[spec.job_type],
    }
    if tower:  # products are embedded by the product_model graphs: the base model's
        config["query_tower_only"] = True
    export_info = {
        "parity_max_abs_diff": exported.parity_max_abs_diff,
        "int8_max_abs_diff": exported.int8_max_abs_diff,
        "int8_mean_cosine": exported.int8_mean_cosine,
        **check,
        "opset": exported.opset,
        "seconds": round(export_seconds, 2),
    }
    timing = {
        "seconds": round(model_seconds + baselines_seconds, 2),
        "model_seconds": round(model_seconds, 2),
        "baselines_seconds": round(baselines_seconds, 2),
        "baselines_cached": baselines_cached,
        "graph": check["metrics_graph"],
    }
    return FineTuned(metrics, baselines, artifacts, config, train, export_info, timing, adapter)


def _product_tower(spec: FineTuneSpec, base_dir: str) -> dict[str, dict[str, Any]]:
    """A query-tower-only bi-encoder's product side, the base model's fp32 and int8 graphs (exported once
    per base model, see evaluation.base_tower), copied into the version's ``product/`` folder."""
    cache = spec.vectors_cache / "towers" if spec.vectors_cache is not None else None
    tower = evaluation.base_tower(base_dir, cache, spec.work_dir / "tower")
    folder = spec.out_dir / PRODUCT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, file in (("product_model", MODEL_FILE), ("product_model_int8", INT8_FILE)):
        shutil.copyfile(tower / file, folder / file)
        files[name] = file_entry(spec.out_dir, f"{PRODUCT_FOLDER}/{file}")
    return files


def _save_adapter(task: Task, hp: Hyperparameters, folder: Path) -> dict[str, Any]:
    """The trained adapter as PEFT saves it (``PeftModel.from_pretrained`` on the base model loads it),
    beside the version's graphs, which have it merged."""
    task.model.save_pretrained(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            files[path.name] = file_entry(folder.parent, f"{folder.name}/{path.name}")
        else:  # PEFT's model card, say: not the version's
            path.unlink()
    return {
        "kind": hp.adapter,
        "r": hp.lora_r,
        "alpha": hp.lora_alpha,
        "target_modules": list(hp.target_modules or DEFAULT_LORA_TARGETS),
        "query_tower_only": hp.query_tower_only,
        "files": files,
    }


async def run(job: JobRun) -> NewVersion:
    """Fine-tune the job's base model on its data; the result becomes a new model version."""
    settings, row = job.settings, job.claimed.job
    problem = base_model_problem(row.base_model or "", settings.model_root_paths, settings.data_dir)
    if problem is not None:  # the api checks this too; the trainer's filesystem has the last word
        raise ValueError(problem)
    version_id = uuid.uuid4()
    job.control.report(output_version_id=str(version_id))  # kept in the heartbeats' progress too
    if job.note_output is not None and not await job.note_output(version_id):
        job.control.stop_for(StopReason.superseded)
        job.control.check()
    job.work_dir = settings.jobs_dir / str(row.id)
    job.out_dir = settings.artifacts_dir / str(row.project_id) / str(version_id)
    checkpoint_store.attach(job.work_dir, settings, row.id)
    if await anyio.to_thread.run_sync(checkpoint_store.restore, job.work_dir):
        job.control.report(checkpoint_fetched=True)
    examples = await job.examples()
    hyperparameters = Hyperparameters.model_validate(row.hyperparameters)
    job_type = job.claimed.job_type
    spec = FineTuneSpec(
        job_type=job_type,
        base_model=row.base_model or "",
        hyperparameters=hyperparameters,
        examples=examples,
        device=job.device,
        work_dir=job.work_dir,
        out_dir=job.out_dir,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        int8_tolerance=settings.int8_tolerance,
        baselines_cache=evaluation.baselines_cache_file(
            settings.cache_dir,
            row.dataset_version_id,
            row.base_model or "",
            hyperparameters.max_length,
            job_type,
        ),
        vectors_cache=settings.cache_dir,
        multi_node=multi_node(settings, row.id, job.claimed.attempt, row.base_model or "", hyperparameters),
    )
    reset_peak_memory(job.device)  # the worker runs one job at a time: its peak from here is this job's
    outcome = await in_thread(job.control, train_and_export, spec, job.control)
    peak_memory = peak_memory_mb(job.device)
    train = outcome.train
    compute: dict[str, Any] = {
        "device": job.device.type,
        "train_seconds": train.train_seconds,
        "steps": train.steps,
        "pairs_per_s": train.pairs_per_s,
        "processes": train.processes,
        "resumed_from_step": train.resumed_from_step,
        "runs": row.attempts,
        "export": outcome.export,
        "evaluation": outcome.evaluation,
        "checkpoint_bytes": train.checkpoint_bytes,
        "peak_memory": peak_memory,
    }
    if train.early_stopping is not None:
        compute["early_stopping"] = train.early_stopping
    duration_s = time.monotonic() - job.started
    folder = version_folder(row.project_id, version_id)
    artifacts: dict[str, Any] = rooted(outcome.artifacts, folder)
    if outcome.adapter is not None:
        artifacts["adapter"] = {**outcome.adapter, "files": rooted(outcome.adapter["files"], folder)}
    return NewVersion(
        id=version_id,
        metrics=outcome.metrics,
        baselines=outcome.baselines,
        artifacts=artifacts,
        config=outcome.config,
        compute=compute,
        library_versions=library_versions(),
        git=git_state(),
        duration_s=duration_s,
        steps=train.steps,
        warnings=tuple(evaluation.validation_warnings(job_type, job.claimed.kind, outcome.metrics)),
    )
