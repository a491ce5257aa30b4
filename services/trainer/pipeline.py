"""One fine-tuning job, start to finish, in the worker's thread: train, evaluate against BM25 and
the zero-shot base model on the validation split, export to ONNX (+int8), check the int8 model."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from services.trainer.control import JobControl
from services.trainer.data import Examples, Judged
from services.trainer.evaluation import BM25Index, classification_metrics, ranking_metrics, rmse
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
from shared.models.enums import DatasetKind, JobType
from shared.onnxmodel import OnnxTextModel
from shared.training import Hyperparameters

EVAL_BATCH = 128
CATALOG_K = 100


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


@dataclass
class JobOutcome:
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    config: dict[str, Any]
    train: TrainResult
    export: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (queries, product texts) -> scores


def torch_embedder(
    model: Any, tokenizer: Any, device: torch.device, max_length: int
) -> Callable[[Sequence[str]], np.ndarray]:
    @torch.no_grad()
    def embed(texts: Sequence[str]) -> np.ndarray:
        # batches of similar length pad little; rows go back to the caller's order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for start in range(0, len(texts), EVAL_BATCH):
            chunk = [texts[i] for i in order[start : start + EVAL_BATCH]]
            batch = tokenizer(
                chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy())
        if not out:
            return np.zeros((0, 1), dtype=np.float32)
        sorted_rows = np.concatenate(out)
        rows = np.empty_like(sorted_rows)
        rows[np.asarray(order)] = sorted_rows
        return rows

    return embed


def _rerank_metrics(
    judged: Judged, products: dict[str, str], score: Scorer, relevant_from: float
) -> dict[str, float]:
    run: dict[str, dict[str, float]] = {}
    for qid, candidates in judged.candidates.items():
        scores = score([judged.queries[qid]] * len(candidates), [products[p] for p in candidates])
        run[qid] = {p: float(s) for p, s in zip(candidates, scores, strict=True)}
    return ranking_metrics(run, judged.grades, k=10, recall_ks=(10,), relevant_from=relevant_from)


def _catalog_metrics(
    judged: Judged,
    ids: list[str],
    query_vectors: np.ndarray,
    catalog_vectors: np.ndarray,
    relevant_from: float,
) -> dict[str, float]:
    run: dict[str, dict[str, float]] = {}
    qids = list(judged.queries)
    position = {pid: i for i, pid in enumerate(ids)}
    for start in range(0, len(qids), 256):
        scores = query_vectors[start : start + 256] @ catalog_vectors.T
        for row, qid in enumerate(qids[start : start + 256]):
            s = scores[row]
            for pid in judged.exclude.get(qid, ()):
                if pid in position:
                    s[position[pid]] = -np.inf
            top = np.argpartition(-s, min(CATALOG_K, len(s) - 1))[:CATALOG_K]
            run[qid] = {ids[i]: float(s[i]) for i in top}
    return ranking_metrics(run, judged.grades, k=10, recall_ks=(10, 100), relevant_from=relevant_from)


def _bm25_catalog(judged: Judged, index: BM25Index, relevant_from: float) -> dict[str, float]:
    qids = list(judged.queries)
    hits = index.search([judged.queries[q] for q in qids], CATALOG_K + 50)
    run = {}
    for qid, ranked in zip(qids, hits, strict=True):
        exclude = judged.exclude.get(qid, set())
        run[qid] = {pid: score for pid, score in ranked if pid not in exclude}
    return ranking_metrics(run, judged.grades, k=10, recall_ks=(10, 100), relevant_from=relevant_from)


def _popularity(examples: Examples) -> dict[str, float]:
    counts: dict[str, int] = {}
    for _, pid, _ in examples.train:
        counts[pid] = counts.get(pid, 0) + 1
    ranked = sorted(counts, key=lambda p: (-counts[p], p))[: CATALOG_K + 60]
    run = {}
    for qid in examples.valid.queries:
        exclude = examples.valid.exclude.get(qid, set())
        run[qid] = {p: float(CATALOG_K + 60 - i) for i, p in enumerate(ranked) if p not in exclude}
    return ranking_metrics(run, examples.valid.grades, k=10, recall_ks=(10, 100))


def _ranking_suite(
    spec: JobSpec, embed: Callable[[Sequence[str]], np.ndarray] | None, score: Scorer | None
) -> dict[str, float]:
    """The model's metrics on the validation split: judged-candidate reranking (relevance data) and
    retrieval from the whole catalog (bi-encoders)."""
    ex = spec.examples
    low, high = ex.grade_range
    relevant_from = low + (high - low) / 2
    metrics: dict[str, float] = {}
    if ex.kind == DatasetKind.relevance and score is not None:
        metrics.update(_rerank_metrics(ex.valid, ex.product_text, score, relevant_from))
    if embed is not None:
        ids = list(ex.product_text)
        catalog = embed([ex.product_text[p] for p in ids])
        queries = embed([ex.valid.queries[q] for q in ex.valid.queries])
        found = _catalog_metrics(ex.valid, ids, queries, catalog, relevant_from)
        prefix = "catalog_" if ex.kind == DatasetKind.relevance else ""
        metrics.update({f"{prefix}{k}": v for k, v in found.items() if k != "queries" or not prefix})
    return metrics


def _cosine_scorer(embed: Callable[[Sequence[str]], np.ndarray]) -> Scorer:
    def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
        scores: np.ndarray = np.sum(embed(queries) * embed(products), axis=1)
        return scores

    return score


def _baselines(spec: JobSpec, base_dir: str) -> dict[str, dict[str, Any]]:
    ex = spec.examples
    low, high = ex.grade_range
    relevant_from = low + (high - low) / 2
    out: dict[str, dict[str, Any]] = {}
    ids = list(ex.product_text)
    texts = [ex.product_text[p] for p in ids]
    index = BM25Index(ids, texts)
    if ex.kind == DatasetKind.relevance:
        run = {}
        for qid, candidates in ex.valid.candidates.items():
            scores = index.score(ex.valid.queries[qid], candidates)
            run[qid] = {p: float(s) for p, s in zip(candidates, scores, strict=True)}
        bm25 = ranking_metrics(run, ex.valid.grades, k=10, recall_ks=(10,), relevant_from=relevant_from)
        catalog = _bm25_catalog(ex.valid, index, relevant_from)
        bm25.update({f"catalog_{k}": v for k, v in catalog.items() if k != "queries"})
        out["bm25"] = bm25
    else:
        out["bm25"] = _bm25_catalog(ex.valid, index, 0.5)
        out["popularity"] = _popularity(ex)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir).to(spec.device).eval()
    embed = torch_embedder(model, tokenizer, spec.device, spec.hyperparameters.max_length)
    out["zero_shot"] = _ranking_suite(spec, embed, _cosine_scorer(embed))
    return out


def _classifier_baselines(spec: JobSpec, base_dir: str) -> dict[str, dict[str, Any]]:
    """Nearest labelled training text, found by BM25 and by the zero-shot base model's embeddings."""
    train = spec.examples.texts.get("train", [])
    valid = spec.examples.texts.get("valid", [])
    if not train or not valid:
        return {}
    truth = [label for _, label in valid]
    ids = [str(i) for i in range(len(train))]
    hits = BM25Index(ids, [t for t, _ in train]).search([t for t, _ in valid], 1)
    majority = max(set(label for _, label in train), key=[label for _, label in train].count)
    bm25 = [train[int(h[0][0])][1] if h else majority for h in hits]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir).to(spec.device).eval()
    embed = torch_embedder(model, tokenizer, spec.device, spec.hyperparameters.max_length)
    nearest = (embed([t for t, _ in valid]) @ embed([t for t, _ in train]).T).argmax(axis=1)
    zero_shot = [train[i][1] for i in nearest]
    return {
        "bm25": classification_metrics(truth, bm25),
        "zero_shot": classification_metrics(truth, zero_shot),
        "majority": classification_metrics(truth, [majority] * len(truth)),
    }


def _train_task(spec: JobSpec, model_dir: str) -> Task:
    hp = spec.hyperparameters
    ex = spec.examples
    if spec.job_type == JobType.bi_encoder:
        return BiEncoderTask(model_dir, ex.train, ex.product_text, hp.max_length)
    if spec.job_type == JobType.cross_encoder:
        return CrossEncoderTask(model_dir, ex.train, ex.product_text, hp.max_length)
    return ClassifierTask(model_dir, ex.texts.get("train", []), ex.labels, hp.max_length)


def _model_metrics(spec: JobSpec, task: Task) -> dict[str, Any]:
    device = spec.device
    if isinstance(task, BiEncoderTask):
        embed = torch_embedder(task.model, task.tokenizer, device, spec.hyperparameters.max_length)
        return _ranking_suite(spec, embed, _cosine_scorer(embed))
    if isinstance(task, CrossEncoderTask):

        @torch.no_grad()
        def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
            return task.logits(queries, products, device).float().cpu().numpy()

        metrics = _ranking_suite(spec, None, score)
        metrics["rmse"] = _grade_rmse(spec, score)
        return metrics
    assert isinstance(task, ClassifierTask)
    valid = spec.examples.texts.get("valid", [])
    with torch.no_grad():
        logits = (
            np.concatenate(
                [
                    task.logits([t for t, _ in valid[i : i + EVAL_BATCH]], device).float().cpu().numpy()
                    for i in range(0, len(valid), EVAL_BATCH)
                ]
            )
            if valid
            else np.zeros((0, len(task.labels)))
        )
    predicted = [task.labels[i] for i in logits.argmax(axis=1)]
    return classification_metrics([label for _, label in valid], predicted)


def _grade_rmse(spec: JobSpec, score: Scorer) -> float:
    """RMSE of the grades the cross-encoder predicts (sigmoid of its logit on the grade scale)."""
    ex = spec.examples
    low, high = ex.grade_range
    predicted: list[float] = []
    actual: list[float] = []
    for qid, candidates in ex.valid.candidates.items():
        logits = score([ex.valid.queries[qid]] * len(candidates), [ex.product_text[p] for p in candidates])
        predicted.extend((low + (high - low) / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))).tolist())
        actual.extend(ex.valid.grades[qid][p] for p in candidates)
    return rmse(predicted, actual) if actual else 0.0


def _onnx_metrics(spec: JobSpec, model: OnnxTextModel) -> dict[str, Any]:
    if spec.job_type == JobType.bi_encoder:
        embed = model.embed
        return _ranking_suite(spec, embed, _cosine_scorer(embed))
    if spec.job_type == JobType.cross_encoder:

        def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
            return np.asarray(model.score_pairs(list(zip(queries, products, strict=True))))

        return _ranking_suite(spec, None, score)
    valid = spec.examples.texts.get("valid", [])
    logits = model.classify_logits([t for t, _ in valid])
    predicted = [spec.examples.labels[i] for i in np.asarray(logits).argmax(axis=1)]
    return classification_metrics([label for _, label in valid], predicted)


HEADLINE = {JobType.bi_encoder: "ndcg@10", JobType.cross_encoder: "ndcg@10", JobType.classifier: "accuracy"}


def _export_examples(spec: JobSpec) -> list[str] | list[tuple[str, str]]:
    ex = spec.examples
    if spec.job_type == JobType.classifier:
        return [t for t, _ in ex.texts.get("valid", ex.texts.get("train", []))[:32]]
    queries = list(ex.valid.queries.values())[:16] or [q for q, _, _ in ex.train[:16]]
    titles = list(ex.product_text.values())[:16]
    if spec.job_type == JobType.cross_encoder:
        return list(zip(queries, titles, strict=False)) or [("query", "product")]
    return queries + titles


def run_job(spec: JobSpec, control: JobControl) -> JobOutcome:
    """Train, evaluate, export. Blocking: the worker runs it in a thread. Raises JobCancelled."""
    from services.trainer.export import export_model

    seed_everything(spec.hyperparameters.seed)
    base_dir = resolve_base_model(spec.base_model)
    resume = checkpoint_model(spec.work_dir)
    task = _train_task(spec, str(resume) if resume else base_dir)
    train = fit(
        task,
        spec.hyperparameters,
        spec.device,
        control,
        spec.work_dir,
        checkpoint_interval_s=spec.checkpoint_interval_s,
    )
    control.check()
    control.report(phase="evaluate")
    metrics = _model_metrics(spec, task)
    control.check()
    baselines = (
        _classifier_baselines(spec, base_dir)
        if spec.job_type == JobType.classifier
        else _baselines(spec, base_dir)
    )
    control.check()
    control.report(phase="export")
    trained = spec.work_dir / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    task.save(trained)
    started = time.monotonic()
    onnx_task: Literal["feature-extraction", "text-classification"] = (
        "feature-extraction" if spec.job_type == JobType.bi_encoder else "text-classification"
    )
    exported = export_model(
        trained,
        spec.out_dir,
        task=onnx_task,
        examples=_export_examples(spec),
        max_length=spec.hyperparameters.max_length,
        fp16=spec.device.type == "cuda",
    )
    control.check()
    control.report(phase="check_int8")
    int8 = OnnxTextModel(
        spec.out_dir / "model.int8.onnx", spec.out_dir, max_length=spec.hyperparameters.max_length
    )
    int8_metrics = _onnx_metrics(spec, int8)
    headline = HEADLINE[spec.job_type]
    drop = float(metrics.get(headline, 0.0)) - float(int8_metrics.get(headline, 0.0))
    servable = drop <= spec.int8_tolerance
    artifacts = dict(exported.files)
    for entry in artifacts.values():
        entry["servable"] = True
    if "model_int8" in artifacts:
        artifacts["model_int8"]["servable"] = servable
    config = {
        "max_length": spec.hyperparameters.max_length,
        "pooling": "mean" if spec.job_type == JobType.bi_encoder else None,
        "normalize": spec.job_type == JobType.bi_encoder,
        "labels": spec.examples.labels if spec.job_type == JobType.classifier else None,
        "headline_metric": headline,
    }
    export_info = {
        "parity_max_abs_diff": exported.parity_max_abs_diff,
        "int8_max_abs_diff": exported.int8_max_abs_diff,
        "int8_mean_cosine": exported.int8_mean_cosine,
        "int8_metrics": int8_metrics,
        "int8_metric_drop": round(drop, 6),
        "int8_servable": servable,
        "opset": exported.opset,
        "seconds": round(time.monotonic() - started, 2),
    }
    return JobOutcome(metrics, baselines, artifacts, config, train, export_info)
