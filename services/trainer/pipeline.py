"""The work of each job type, in the worker's thread.

A fine-tune trains, scores the model and the baselines on the validation split, exports to ONNX
(+int8) and checks the int8 graph. `evaluate`, `export` and `index` work on a registered model version:
score it on another dataset version, rebuild its int8/fp16 graphs on this machine, or embed a catalog
for the inference service."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer

from services.trainer import assess
from services.trainer.assess import HEADLINE, Scorer
from services.trainer.control import JobControl
from services.trainer.data import Examples
from services.trainer.finetune import (
    BiEncoderTask,
    ClassifierTask,
    CrossEncoderTask,
    Task,
    TrainResult,
    checkpoint_model,
    fit,
    mean_pool,
    resolve_base_model,
    seed_everything,
)
from shared.files import file_entry
from shared.models.enums import DatasetKind, JobType
from shared.onnxmodel import OnnxTextModel
from shared.training import Hyperparameters

EVAL_BATCH = 128
OnnxTask = Literal["feature-extraction", "text-classification"]


@dataclass
class JobSpec:
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


@dataclass
class JobOutcome:
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    config: dict[str, Any]
    train: TrainResult
    export: dict[str, Any] = field(default_factory=dict)


@dataclass
class VersionSpec:
    """A registered model version that an evaluate, export or index job works on."""

    job_type: JobType  # the fine-tune that made it
    directory: Path  # its artifacts folder
    artifacts: dict[str, dict[str, Any]]  # entries' paths relative to `directory`
    config: dict[str, Any]
    metrics: dict[str, Any]
    base_model: str
    device: torch.device
    int8_tolerance: float
    examples: Examples | None = None  # evaluate: the data to score on; export: its own training data
    catalog: dict[str, str] | None = None  # index: product id -> text
    catalog_version_id: uuid.UUID | None = None
    baselines_cache: Path | None = None

    @property
    def max_length(self) -> int:
        return int(self.config.get("max_length") or 128)

    def onnx(self, name: str) -> OnnxTextModel:
        return OnnxTextModel(
            self.directory / self.artifacts[name]["path"], self.directory, max_length=self.max_length
        )


def torch_embedder(
    model: Any, tokenizer: Any, device: torch.device, max_length: int
) -> Callable[[Sequence[str]], np.ndarray]:
    @torch.no_grad()
    def embed(texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), EVAL_BATCH):
            batch = tokenizer(
                list(texts[start : start + EVAL_BATCH]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    return embed


def _zero_shot(base_dir: str, device: torch.device, max_length: int) -> Callable[[], Scorer]:
    def build() -> Scorer:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModel.from_pretrained(base_dir).to(device).eval()
        return Scorer(embed=torch_embedder(model, tokenizer, device, max_length))

    return build


def _torch_scorer(task: Task, device: torch.device, max_length: int) -> Scorer:
    if isinstance(task, BiEncoderTask):
        return Scorer(embed=torch_embedder(task.model, task.tokenizer, device, max_length))
    if isinstance(task, CrossEncoderTask):

        @torch.no_grad()
        def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
            parts = [
                task.logits(queries[i : i + EVAL_BATCH], products[i : i + EVAL_BATCH], device)
                .float()
                .cpu()
                .numpy()
                for i in range(0, len(queries), EVAL_BATCH)
            ]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

        return Scorer(score=score)
    assert isinstance(task, ClassifierTask)

    @torch.no_grad()
    def logits(texts: Sequence[str]) -> np.ndarray:
        parts = [
            task.logits(texts[i : i + EVAL_BATCH], device).float().cpu().numpy()
            for i in range(0, len(texts), EVAL_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(task.labels)), dtype=np.float32)

    return Scorer(logits=logits, labels=task.labels)


def _train_task(spec: JobSpec, model_dir: str) -> Task:
    hp = spec.hyperparameters
    ex = spec.examples
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
        )
    if spec.job_type == JobType.cross_encoder:
        return CrossEncoderTask(model_dir, ex.train, ex.product_text, hp.max_length)
    return ClassifierTask(model_dir, ex.texts.get("train", []), ex.labels, hp.max_length)


def export_examples(job_type: JobType, ex: Examples) -> list[str] | list[tuple[str, str]]:
    """Real texts for the parity checks: validation queries and catalog titles, or labelled texts."""
    if job_type == JobType.classifier:
        return [t for t, _ in ex.texts.get("valid", ex.texts.get("train", []))[:32]] or ["example"]
    queries = list(ex.valid.queries.values())[:16] or [q for q, _, _ in ex.train[:16]]
    titles = list(ex.product_text.values())[:16]
    if job_type == JobType.cross_encoder:
        return list(zip(queries, titles, strict=False)) or [("query", "product")]
    return (queries + titles) or ["example"]


def _onnx_task(job_type: JobType) -> OnnxTask:
    return "feature-extraction" if job_type == JobType.bi_encoder else "text-classification"


def _int8_check(
    job_type: JobType,
    examples: Examples,
    int8: OnnxTextModel,
    reference: dict[str, Any],
    labels: list[str] | None,
    tolerance: float,
    control: JobControl,
) -> dict[str, Any]:
    """The int8 graph's headline metric against the model's: servable only within `tolerance`."""
    control.report(phase="check_int8")
    scorer = assess.onnx_scorer(int8, job_type, labels)
    # on relevance data the headline is the judged-candidate reranking; the catalog pass is not needed
    metrics = assess.model_metrics(job_type, examples, scorer, control, "int8", catalog=False)
    headline = HEADLINE[job_type]
    drop = float(reference.get(headline, 0.0)) - float(metrics.get(headline, 0.0))
    return {
        "int8_metrics": metrics,
        "int8_metric_drop": round(drop, 6),
        "int8_servable": drop <= tolerance,
        "int8_tolerance": tolerance,
    }


def run_job(spec: JobSpec, control: JobControl) -> JobOutcome:
    """Train, evaluate, export. Blocking: the worker runs it in a thread. Raises JobCancelled."""
    from services.trainer.export import export_model

    seed_everything(spec.hyperparameters.seed)
    hp = spec.hyperparameters
    base_dir = resolve_base_model(spec.base_model)
    resume = checkpoint_model(spec.work_dir)
    task = _train_task(spec, str(resume) if resume else base_dir)
    if isinstance(task, BiEncoderTask):
        task.mine(spec.device, control, spec.work_dir / "negatives.json")
    train = fit(
        task, hp, spec.device, control, spec.work_dir, checkpoint_interval_s=spec.checkpoint_interval_s
    )
    control.check()
    control.report(phase="evaluate")
    scorer = _torch_scorer(task, spec.device, hp.max_length)
    metrics = assess.model_metrics(spec.job_type, spec.examples, scorer, control, "model")
    baselines = assess.baselines(
        spec.job_type,
        spec.examples,
        _zero_shot(base_dir, spec.device, hp.max_length),
        control,
        spec.baselines_cache,
    )
    control.check()
    control.report(phase="export")
    trained = spec.work_dir / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    task.save(trained)
    started = time.monotonic()
    exported = export_model(
        trained,
        spec.out_dir,
        task=_onnx_task(spec.job_type),
        examples=export_examples(spec.job_type, spec.examples),
        max_length=hp.max_length,
        fp16=spec.device.type == "cuda",
    )
    control.check()
    labels = spec.examples.labels if spec.job_type == JobType.classifier else None
    int8 = OnnxTextModel(spec.out_dir / "model.int8.onnx", spec.out_dir, max_length=hp.max_length)
    check = _int8_check(spec.job_type, spec.examples, int8, metrics, labels, spec.int8_tolerance, control)
    artifacts = {name: {**entry, "servable": True} for name, entry in exported.files.items()}
    artifacts["model_int8"]["servable"] = check["int8_servable"]
    config = {
        "max_length": hp.max_length,
        "pooling": "mean" if spec.job_type == JobType.bi_encoder else None,
        "normalize": spec.job_type == JobType.bi_encoder,
        "labels": labels,
        "headline_metric": HEADLINE[spec.job_type],
    }
    export_info = {
        "parity_max_abs_diff": exported.parity_max_abs_diff,
        "int8_max_abs_diff": exported.int8_max_abs_diff,
        "int8_mean_cosine": exported.int8_mean_cosine,
        **check,
        "opset": exported.opset,
        "seconds": round(time.monotonic() - started, 2),
    }
    return JobOutcome(metrics, baselines, artifacts, config, train, export_info)


def run_evaluate(spec: VersionSpec, control: JobControl) -> dict[str, Any]:
    """Score the version's fp32 graph, BM25 and the zero-shot base model on a dataset version."""
    assert spec.examples is not None
    control.report(phase="evaluate")
    labels = spec.config.get("labels")
    scorer = assess.onnx_scorer(spec.onnx("model"), spec.job_type, labels)
    metrics = assess.model_metrics(spec.job_type, spec.examples, scorer, control, "model")
    base_dir = resolve_base_model(spec.base_model)
    baselines = assess.baselines(
        spec.job_type,
        spec.examples,
        _zero_shot(base_dir, spec.device, spec.max_length),
        control,
        spec.baselines_cache,
    )
    return {"model_file": "model", "metrics": metrics, "baselines": baselines}


def run_export(spec: VersionSpec, control: JobControl) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Rebuild the int8 graph for this machine's CPU and the fp16 graph from the fp32 one, check them,
    and check the int8 graph's metric on the version's own validation split."""
    from services.trainer.export import rebuild_variants

    assert spec.examples is not None
    control.report(phase="export")
    rebuilt = rebuild_variants(
        spec.directory,
        model_file=spec.artifacts["model"]["path"],
        task=_onnx_task(spec.job_type),
        examples=export_examples(spec.job_type, spec.examples),
        max_length=spec.max_length,
    )
    control.check()
    int8 = OnnxTextModel(
        spec.directory / rebuilt.files["model_int8"]["path"], spec.directory, max_length=spec.max_length
    )
    check = _int8_check(
        spec.job_type,
        spec.examples,
        int8,
        spec.metrics,
        spec.config.get("labels"),
        spec.int8_tolerance,
        control,
    )
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


def run_index(spec: VersionSpec, control: JobControl) -> dict[str, Any]:
    """Embed every catalog product with the graph CPU serving uses; write `embeddings.npy` (float32,
    one L2-normalised row per product) and `product_ids.parquet` (the rows' ids, in order)."""
    assert spec.catalog is not None and spec.catalog_version_id is not None
    control.report(phase="index")
    int8 = spec.artifacts.get("model_int8")
    model_file = "model_int8" if int8 and int8.get("servable") else "model"
    ids = list(spec.catalog)
    vectors = assess.embed_all(
        spec.onnx(model_file).embed, [spec.catalog[p] for p in ids], control, "catalog"
    )
    control.check()
    relative = Path("catalog") / str(spec.catalog_version_id)
    final = spec.directory / relative
    staging = spec.directory / "catalog" / f".{spec.catalog_version_id}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        np.save(staging / "embeddings.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        pq.write_table(pa.table({"product_id": pa.array(ids, pa.string())}), staging / "product_ids.parquet")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "dataset_version_id": str(spec.catalog_version_id),
        "model_file": model_file,
        "count": len(ids),
        "dim": int(vectors.shape[1]) if len(ids) else 0,
        "files": {
            "embeddings": file_entry(spec.directory, str(relative / "embeddings.npy")),
            "product_ids": file_entry(spec.directory, str(relative / "product_ids.parquet")),
        },
    }
