"""Evaluation, in one place: scoring a model on a dataset version's validation split, the baselines
beside it, and the int8 graph's check against the model it was made from.

A model is seen through what it can do: embed texts (bi-encoder), score (query, product) pairs
(cross-encoder) or give label logits (classifier), whether it runs in torch after training or in
onnxruntime from a registered version. Long loops report progress and stop within a chunk when the job
is cancelled. Baselines (BM25 and the zero-shot base model) depend only on the data and the base model,
so they are computed once per dataset version and kept in a cache file; the zero-shot model's catalog
embeddings are kept per (catalog texts, base model, max_length), so a new dataset version over the same
catalog does not embed it again. A fine-tune is scored with the graph that will be served (see
``served_metrics``). The metrics themselves are pure functions in shared.metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from services.trainer.control import JobControl
from services.trainer.export import export_graph, export_tower
from services.trainer.finetune.base import Task, mean_pool
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.classifier import ClassifierTask
from services.trainer.finetune.cross_encoder import CrossEncoderTask
from shared.datasets.examples import Examples, Judged
from shared.files import sha256_file, write_text_atomic
from shared.metrics import CATALOG_DEPTH, classification_metrics, ranking_metrics, rmse
from shared.models.enums import DatasetKind, JobType
from shared.onnxmodel import OnnxTextModel
from shared.search import BM25Index, dense_top_k

log = logging.getLogger("recforge.trainer")

CHUNK = 512  # texts or pairs scored between progress reports and cancellation checks
TORCH_BATCH = 128
BASELINES_REVISION = 2  # bump when the baselines' definition changes, so cached ones are recomputed

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors
PairScore = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (queries, products) -> scores
Logits = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, labels)

VECTORS_FROM = 2048  # text lists at least this long (catalogs) are worth keeping embedded
VECTORS_KEPT = 8  # cached embedding files kept per cache folder, the least recently used go first

HEADLINE = {JobType.bi_encoder: "ndcg@10", JobType.cross_encoder: "ndcg@10", JobType.classifier: "accuracy"}


@dataclass(frozen=True)
class VectorCache:
    """Embeddings of long text lists (catalogs) by one model, kept as .npy files named by a digest of
    the model's key and the texts: a model that never changes (the zero-shot base model) embeds a
    catalog once. At most ``kept`` files stay, the least recently read or written go first."""

    folder: Path
    model_key: str
    kept: int = VECTORS_KEPT

    def file(self, texts: Sequence[str]) -> Path:
        digest = hashlib.sha256(self.model_key.encode())
        for text in texts:
            digest.update(b"\0" + text.encode())
        return self.folder / f"{digest.hexdigest()[:32]}.npy"

    def get(self, texts: Sequence[str]) -> np.ndarray | None:
        path = self.file(texts)
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            return None
        os.utime(path)  # recently used
        return np.asarray(vectors, dtype=np.float32)

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        path = self.file(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        with staged.open("wb") as handle:
            np.save(handle, vectors.astype(np.float32, copy=False), allow_pickle=False)
        os.replace(staged, path)
        files = sorted(self.folder.glob("*.npy"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in files[self.kept :]:
            old.unlink(missing_ok=True)


@dataclass
class Scorer:
    """What a model can do; exactly one of embed, score and logits is set."""

    embed: Embed | None = None
    score: PairScore | None = None
    logits: Logits | None = None
    labels: list[str] | None = None  # the classifier's label order
    vectors: VectorCache | None = None  # where a model that never changes keeps its catalog embeddings
    products: Scorer | None = None  # a bi-encoder whose products another model embeds (query tower only)


def onnx_scorer(
    model: OnnxTextModel,
    job_type: JobType,
    labels: list[str] | None = None,
    products: OnnxTextModel | None = None,
    cache_dir: Path | None = None,
) -> Scorer:
    """A graph's scorer; with ``products``, a bi-encoder whose products that graph embeds: a graph that
    never changes, so with ``cache_dir`` its catalog embeddings are kept by its digest (VectorCache)."""
    if job_type == JobType.bi_encoder:
        return Scorer(embed=model.embed, products=product_scorer(products, cache_dir) if products else None)
    if job_type == JobType.cross_encoder:

        def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
            return np.asarray(model.score_pairs(list(zip(queries, products, strict=True))))

        return Scorer(score=score)
    return Scorer(logits=lambda texts: np.asarray(model.classify_logits(list(texts))), labels=labels)


def product_scorer(model: OnnxTextModel, cache_dir: Path | None) -> Scorer:
    key = json.dumps([sha256_file(model.model_path), model.max_length, "mean"])
    return Scorer(
        embed=model.embed, vectors=VectorCache(cache_dir / "embeddings", key) if cache_dir else None
    )


def torch_embedder(model: Any, tokenizer: Any, device: torch.device, max_length: int) -> Embed:
    @torch.no_grad()
    def embed(texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), TORCH_BATCH):
            batch = tokenizer(
                list(texts[start : start + TORCH_BATCH]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    return embed


PARITY_TEXTS = (  # what a base model's cached graph is checked against torch on
    "cordless drill 18v with two batteries",
    "Bathroom vanity, 36 in. white oak with marble top and undermount sink",
    "pcr tubes",
    "a",
)


def zero_shot(
    base_dir: str, device: torch.device, max_length: int, cache_dir: Path | None = None
) -> Callable[[], Scorer]:
    """The base model as it is, mean pooled: built only when the baselines are not cached. With
    ``cache_dir``, its catalog embeddings are kept there (see VectorCache) and, on a CPU, the model runs
    as an fp32 ONNX graph exported once per base model into ``cache_dir/graphs`` (checked against torch,
    so the baselines are the same model's; onnxruntime embeds a catalog about 1.5x as fast as torch)."""

    def build() -> Scorer:
        vectors = (
            VectorCache(cache_dir / "embeddings", json.dumps([base_dir, max_length, "mean"]))
            if cache_dir is not None
            else None
        )
        if cache_dir is not None and device.type == "cpu" and Path(base_dir).is_dir():
            graph = base_graph(Path(base_dir), cache_dir / "graphs")
            model = OnnxTextModel(graph, graph.parent, max_length=max_length)
            return Scorer(embed=model.embed, vectors=vectors)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        torch_model = AutoModel.from_pretrained(base_dir).to(device).eval()
        return Scorer(embed=torch_embedder(torch_model, tokenizer, device, max_length), vectors=vectors)

    return build


def _folder_stamp(base_dir: Path) -> str:
    """A local model folder's path and files' sizes and modification times, digested: a folder whose
    files change is exported again."""
    files = sorted(p for p in base_dir.iterdir() if p.is_file())
    stamp = [str(base_dir.resolve()), *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]


def base_graph(base_dir: Path, folder: Path) -> Path:
    """The fp32 ONNX graph of a local base model, exported into ``folder`` the first time it is asked
    for."""
    return export_graph(base_dir, folder / _folder_stamp(base_dir), examples=list(PARITY_TEXTS))


def base_tower(base_dir: str, folder: Path | None, staging: Path) -> Path:
    """The fp32 and int8 graphs a query-tower-only bi-encoder embeds products with: the base model's,
    exported once per local base model into ``folder`` (the same files for every version made from it);
    a hub model, or no ``folder``, is exported into ``staging``."""
    local = Path(base_dir)
    if folder is not None and local.is_dir():
        return export_tower(local, folder / _folder_stamp(local), examples=list(PARITY_TEXTS))
    return export_tower(Path(base_dir), staging, examples=list(PARITY_TEXTS))


def torch_scorer(task: Task, device: torch.device, max_length: int) -> Scorer:
    """A fine-tune's model as it is in torch, during or right after training."""
    if isinstance(task, BiEncoderTask):
        queries = torch_embedder(task.model, task.tokenizer, device, max_length)
        if not task.query_tower_only:
            return Scorer(embed=queries)

        def base_model(texts: Sequence[str]) -> np.ndarray:
            with task.model.disable_adapter():  # the product tower is the base model
                return queries(texts)

        return Scorer(embed=queries, products=Scorer(embed=base_model))
    if isinstance(task, CrossEncoderTask):

        @torch.no_grad()
        def score(queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
            parts = [
                task.logits(queries[i : i + TORCH_BATCH], products[i : i + TORCH_BATCH], device)
                .float()
                .cpu()
                .numpy()
                for i in range(0, len(queries), TORCH_BATCH)
            ]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

        return Scorer(score=score)
    assert isinstance(task, ClassifierTask)

    @torch.no_grad()
    def logits(texts: Sequence[str]) -> np.ndarray:
        parts = [
            task.logits(texts[i : i + TORCH_BATCH], device).float().cpu().numpy()
            for i in range(0, len(texts), TORCH_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(task.labels)), dtype=np.float32)

    return Scorer(logits=logits, labels=task.labels)


def _in_chunks(
    run: Callable[[list[int]], np.ndarray], n: int, control: JobControl, label: str
) -> list[np.ndarray]:
    parts = []
    for start in range(0, n, CHUNK):
        control.check()
        parts.append(run(list(range(start, min(start + CHUNK, n)))))
        control.report(evaluating=label, done=min(start + CHUNK, n), total=n)
    return parts


def embed_texts(scorer: Scorer, texts: Sequence[str], control: JobControl, label: str) -> np.ndarray:
    """``embed_all`` with the scorer's model, through its VectorCache for long lists when it has one."""
    assert scorer.embed is not None
    cache = scorer.vectors if len(texts) >= VECTORS_FROM else None
    if cache is not None:
        found = cache.get(texts)
        if found is not None:
            control.report(evaluating=label, done=len(texts), total=len(texts), cached=True)
            return found
    vectors = embed_all(scorer.embed, texts, control, label)
    if cache is not None:
        try:
            cache.put(texts, vectors)
        except OSError:  # a cache that cannot be written costs time, never the job
            log.warning("could not keep catalog embeddings", extra={"path": str(cache.folder)})
    return vectors


def embed_all(embed: Embed, texts: Sequence[str], control: JobControl, label: str) -> np.ndarray:
    """Embed texts in length order (little padding), chunk by chunk; rows come back in input order."""
    order = np.asarray(sorted(range(len(texts)), key=lambda i: len(texts[i])), dtype=np.int64)
    parts = _in_chunks(lambda idx: embed([texts[order[i]] for i in idx]), len(texts), control, label)
    if not parts:
        return np.zeros((0, 1), dtype=np.float32)
    sorted_rows = np.concatenate(parts).astype(np.float32, copy=False)
    rows = np.empty_like(sorted_rows)
    rows[order] = sorted_rows
    return rows


def score_all(
    score: PairScore, queries: Sequence[str], products: Sequence[str], control: JobControl, label: str
) -> np.ndarray:
    parts = _in_chunks(
        lambda idx: np.asarray(score([queries[i] for i in idx], [products[i] for i in idx])),
        len(queries),
        control,
        label,
    )
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _judged_pairs(judged: Judged) -> tuple[list[str], list[str]]:
    qids, pids = [], []
    for qid, candidates in judged.candidates.items():
        qids.extend([qid] * len(candidates))
        pids.extend(candidates)
    return qids, pids


def _run_of(qids: list[str], pids: list[str], scores: np.ndarray) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, pid, s in zip(qids, pids, scores.tolist(), strict=True):
        run.setdefault(qid, {})[pid] = float(s)
    return run


def top_of_catalog(
    judged: Judged, ids: list[str], query_vectors: np.ndarray, catalog_vectors: np.ndarray
) -> dict[str, dict[str, float]]:
    """Each query's CATALOG_DEPTH best products by dot product, its excluded products (history) left out."""
    return dense_top_k(
        list(judged.queries), query_vectors, ids, catalog_vectors, CATALOG_DEPTH, judged.exclude
    )


def ranking_suite(
    examples: Examples, scorer: Scorer, control: JobControl, label: str, *, catalog: bool = True
) -> dict[str, float]:
    """Reranking of each validation query's judged products (relevance data) and, for embedding
    models, retrieval from the whole catalog (prefixed `catalog_` on relevance data). Every text is
    embedded once."""
    valid = examples.valid
    cut = examples.relevant_from
    metrics: dict[str, float] = {}
    relevance = examples.kind == DatasetKind.relevance
    qids, pids = _judged_pairs(valid)
    if scorer.score is not None and relevance:
        scores = score_all(
            scorer.score,
            [valid.queries[q] for q in qids],
            [examples.product_text[p] for p in pids],
            control,
            label,
        )
        metrics.update(ranking_metrics(_run_of(qids, pids, scores), valid.grades, k=10, relevant_from=cut))
        if qids:  # a cross-encoder's logit, read on the grade scale, is also a graded prediction
            low, high = examples.grade_range
            predicted = low + (high - low) / (1 + np.exp(-scores.astype(np.float64)))
            metrics["rmse"] = rmse(
                predicted.tolist(), [valid.grades[q][p] for q, p in zip(qids, pids, strict=True)]
            )
    if scorer.embed is None:
        return metrics
    product_side = scorer.products or scorer
    query_ids = list(valid.queries)
    query_vectors = embed_texts(scorer, [valid.queries[q] for q in query_ids], control, f"{label} queries")
    catalog = catalog or not relevance  # retrieval is the only view of sequence data
    ids = list(examples.product_text) if catalog else list(dict.fromkeys(pids))
    vectors = embed_texts(product_side, [examples.product_text[p] for p in ids], control, f"{label} products")
    if relevance:
        q_row = {q: i for i, q in enumerate(query_ids)}
        p_row = {p: i for i, p in enumerate(ids)}
        scores = np.einsum(
            "ij,ij->i",
            query_vectors[[q_row[q] for q in qids]].reshape(len(qids), -1),
            vectors[[p_row[p] for p in pids]].reshape(len(pids), -1),
        )
        metrics.update(ranking_metrics(_run_of(qids, pids, scores), valid.grades, k=10, relevant_from=cut))
    if catalog:
        found = ranking_metrics(
            top_of_catalog(valid, ids, query_vectors, vectors),
            valid.grades,
            k=10,
            recall_ks=(10, 100),
            relevant_from=cut,
        )
        if relevance:
            found = {f"catalog_{k}": v for k, v in found.items() if k != "queries"}
        found["catalog_size"] = len(ids)
        metrics.update(found)
    return metrics


def classifier_suite(examples: Examples, scorer: Scorer, control: JobControl, label: str) -> dict[str, Any]:
    assert scorer.logits is not None and scorer.labels is not None
    valid = examples.texts.get("valid", [])
    texts = [t for t, _ in valid]
    parts = _in_chunks(lambda idx: scorer.logits([texts[i] for i in idx]), len(texts), control, label)  # type: ignore[misc]
    labels = scorer.labels
    predicted = [labels[i] for i in np.concatenate(parts).argmax(axis=1)] if parts else []
    return classification_metrics([gold for _, gold in valid], predicted)


# Below this many validation queries (users, texts) a metric is mostly noise: the job's result says so.
MIN_VALIDATION = 20


def validation_warnings(job_type: JobType, kind: DatasetKind | None, metrics: dict[str, Any]) -> list[str]:
    """What the job's result warns about its metrics: a validation split too small to trust."""
    if job_type == JobType.classifier:
        count = sum(int(c.get("support", 0)) for c in (metrics.get("per_class") or {}).values())
        noun = "texts"
    else:
        count = int(metrics.get("queries", MIN_VALIDATION))
        noun = "queries" if kind in (None, DatasetKind.relevance) else "users"
    if count >= MIN_VALIDATION:
        return []
    return [
        f"the metrics come from {count} validation {noun}, fewer than {MIN_VALIDATION}: they are mostly "
        "noise; import more data, or a larger valid_fraction, before comparing versions on them"
    ]


def model_metrics(
    job_type: JobType,
    examples: Examples,
    scorer: Scorer,
    control: JobControl,
    label: str,
    *,
    catalog: bool = True,
) -> dict[str, Any]:
    if job_type == JobType.classifier:
        return classifier_suite(examples, scorer, control, label)
    metrics: dict[str, Any] = ranking_suite(examples, scorer, control, label, catalog=catalog)
    return metrics


# Baselines


def _bm25_catalog(judged: Judged, index: BM25Index, cut: float) -> dict[str, float]:
    qids = list(judged.queries)
    hits = index.search([judged.queries[q] for q in qids], CATALOG_DEPTH + 50)
    run = {}
    for qid, ranked in zip(qids, hits, strict=True):
        exclude = judged.exclude.get(qid, set())
        run[qid] = {pid: score for pid, score in ranked if pid not in exclude}
    return ranking_metrics(run, judged.grades, k=10, recall_ks=(10, 100), relevant_from=cut)


def _popularity(examples: Examples) -> dict[str, float]:
    counts: dict[str, int] = {}
    for _, pid, _ in examples.train:
        counts[pid] = counts.get(pid, 0) + 1
    ranked = sorted(counts, key=lambda p: (-counts[p], p))[: CATALOG_DEPTH + 60]
    run = {}
    for qid in examples.valid.queries:
        exclude = examples.valid.exclude.get(qid, set())
        run[qid] = {p: float(CATALOG_DEPTH + 60 - i) for i, p in enumerate(ranked) if p not in exclude}
    return ranking_metrics(run, examples.valid.grades, k=10, recall_ks=(10, 100))


def _ranking_baselines(
    examples: Examples, zero_shot: Scorer, control: JobControl
) -> dict[str, dict[str, Any]]:
    cut = examples.relevant_from
    ids = list(examples.product_text)
    index = BM25Index(ids, [examples.product_text[p] for p in ids])
    out: dict[str, dict[str, Any]] = {}
    if examples.kind == DatasetKind.relevance:
        valid = examples.valid
        run = {}
        for qid, candidates in valid.candidates.items():
            scores = index.score(valid.queries[qid], candidates)
            run[qid] = {p: float(s) for p, s in zip(candidates, scores, strict=True)}
        bm25: dict[str, Any] = ranking_metrics(run, valid.grades, k=10, relevant_from=cut)
        catalog = _bm25_catalog(valid, index, cut)
        bm25.update({f"catalog_{k}": v for k, v in catalog.items() if k != "queries"})
        out["bm25"] = bm25
    else:
        out["bm25"] = _bm25_catalog(examples.valid, index, cut)
        out["popularity"] = _popularity(examples)
    control.check()
    out["zero_shot"] = ranking_suite(examples, zero_shot, control, "zero-shot")
    return out


def _classifier_baselines(
    examples: Examples, zero_shot: Scorer, control: JobControl
) -> dict[str, dict[str, Any]]:
    """Nearest labelled training text, found by BM25 and by the zero-shot base model's embeddings."""
    assert zero_shot.embed is not None
    train = examples.texts.get("train", [])
    valid = examples.texts.get("valid", [])
    if not train or not valid:
        return {}
    truth = [label for _, label in valid]
    train_labels = [label for _, label in train]
    majority = max(sorted(set(train_labels)), key=train_labels.count)
    ids = [str(i) for i in range(len(train))]
    hits = BM25Index(ids, [t for t, _ in train]).search([t for t, _ in valid], 1)
    bm25 = [train[int(h[0][0])][1] if h else majority for h in hits]
    valid_vectors = embed_texts(zero_shot, [t for t, _ in valid], control, "zero-shot valid")
    train_vectors = embed_texts(zero_shot, [t for t, _ in train], control, "zero-shot train")
    nearest = (valid_vectors @ train_vectors.T).argmax(axis=1)
    return {
        "bm25": classification_metrics(truth, bm25),
        "zero_shot": classification_metrics(truth, [train[i][1] for i in nearest]),
        "majority": classification_metrics(truth, [majority] * len(truth)),
    }


def baselines_cache_file(
    cache_dir: Path, dataset_version_id: Any, base_model: str, max_length: int, job_type: JobType
) -> Path:
    """Where the baselines of (dataset version, base model, max_length, task family) are kept."""
    family = "classifier" if job_type == JobType.classifier else "ranking"
    raw = json.dumps([BASELINES_REVISION, str(dataset_version_id), base_model, max_length, family])
    return cache_dir / "baselines" / f"{hashlib.sha256(raw.encode()).hexdigest()[:32]}.json"


def baselines(
    job_type: JobType,
    examples: Examples,
    zero_shot: Callable[[], Scorer],
    control: JobControl,
    cache_file: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """BM25 and the zero-shot base model (plus popularity or majority) on the validation split.

    `zero_shot` builds the base model's embedder only when the cache has no answer."""
    if cache_file is not None and cache_file.is_file():
        try:
            cached: dict[str, dict[str, Any]] = json.loads(cache_file.read_text(encoding="utf-8"))
            return cached
        except (OSError, ValueError):
            log.warning("ignoring an unreadable baselines cache file", extra={"path": str(cache_file)})
    control.report(phase="baselines")
    found = (
        _classifier_baselines(examples, zero_shot(), control)
        if job_type == JobType.classifier
        else _ranking_baselines(examples, zero_shot(), control)
    )
    if cache_file is not None:
        write_text_atomic(cache_file, json.dumps(found, sort_keys=True))
    return found


def headline(job_type: JobType, metrics: dict[str, Any]) -> float:
    """The one number a model of this task is judged by (early stopping, the int8 check)."""
    return float(metrics.get(HEADLINE[job_type], 0.0))


def require_validation_split(job_type: JobType, examples: Examples) -> None:
    """Early stopping scores the validation split: refuse to start without one."""
    valid = examples.texts.get("valid") if job_type == JobType.classifier else examples.valid.queries
    if not valid:
        raise ValueError(
            "early_stopping_patience needs a validation split, and this dataset version has none: "
            "import it with a valid_fraction above 0, or train without early stopping"
        )


def validation_score(job_type: JobType, examples: Examples, scorer: Scorer, control: JobControl) -> float:
    """The headline metric on the validation split, as early stopping reads it: on relevance data the
    judged candidates are reranked (the catalog pass is left out); sequence data is retrieval only."""
    require_validation_split(job_type, examples)
    return headline(job_type, model_metrics(job_type, examples, scorer, control, "validation", catalog=False))


def task_validation_score(
    job_type: JobType,
    examples: Examples,
    max_length: int,
    task: Task,
    device: torch.device,
    control: JobControl,
) -> float:
    """``validation_score`` of a task's model as it is in torch now: what a training process that only
    has its task (one of several, see services.trainer.finetune.distributed) scores early stopping by."""
    return validation_score(job_type, examples, torch_scorer(task, device, max_length), control)


def _int8_verdict(
    job_type: JobType, reference: dict[str, Any], int8_metrics: dict[str, Any], tolerance: float
) -> dict[str, Any]:
    drop = headline(job_type, reference) - headline(job_type, int8_metrics)
    return {
        "int8_metrics": int8_metrics,
        "int8_metric_drop": round(drop, 6),
        "int8_servable": drop <= tolerance,
        "int8_tolerance": tolerance,
    }


def int8_check(
    job_type: JobType,
    examples: Examples,
    int8: OnnxTextModel,
    reference: dict[str, Any],
    labels: list[str] | None,
    tolerance: float,
    control: JobControl,
    products: OnnxTextModel | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The int8 graph's headline metric against the model's: servable only within `tolerance`. With
    ``products``, the int8 graph that embeds a query-tower-only bi-encoder's products."""
    control.report(phase="check_int8")
    scorer = onnx_scorer(int8, job_type, labels, products, cache_dir)
    # on relevance data the headline is the judged-candidate reranking; the catalog pass is not needed
    metrics = model_metrics(job_type, examples, scorer, control, "int8", catalog=False)
    return _int8_verdict(job_type, reference, metrics, tolerance)


def _catalog_pass(job_type: JobType, examples: Examples) -> bool:
    """Whether the full metrics need more than the headline view: a bi-encoder on relevance data
    also retrieves from the whole catalog (sequence data is retrieval only, always)."""
    return job_type == JobType.bi_encoder and examples.kind == DatasetKind.relevance


def served_metrics(
    job_type: JobType,
    examples: Examples,
    fp32: OnnxTextModel,
    int8: OnnxTextModel,
    labels: list[str] | None,
    tolerance: float,
    control: JobControl,
    products: tuple[OnnxTextModel, OnnxTextModel] | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version's metrics, measured on the graph inference will serve, and the int8 check.

    The fp32 graph is scored on the headline view (each validation query's judged products, no catalog
    pass): that is the reference. The int8 graph is scored in full; within ``tolerance`` of the
    reference on the headline it is servable, and its metrics are the version's. Otherwise the fp32
    graph, which serves instead, is scored in full. Both graphs run in onnxruntime, batches grouped by
    length, as inference runs them: the catalog pass costs what serving it costs. With ``products``
    (fp32, int8), the graphs that embed a query-tower-only bi-encoder's products, the one of the same
    precision beside each query graph; the catalog's embeddings by them are kept in ``cache_dir``."""
    fp32_products, int8_products = products or (None, None)

    def scorer(graph: OnnxTextModel, product_graph: OnnxTextModel | None) -> Scorer:
        return onnx_scorer(graph, job_type, labels, product_graph, cache_dir)

    control.report(phase="evaluate")
    reference = model_metrics(job_type, examples, scorer(fp32, fp32_products), control, "fp32", catalog=False)
    control.report(phase="check_int8")
    int8_metrics = model_metrics(job_type, examples, scorer(int8, int8_products), control, "int8")
    check = _int8_verdict(job_type, reference, int8_metrics, tolerance)
    check["fp32_metrics"] = reference
    if check["int8_servable"]:
        return int8_metrics, {**check, "metrics_graph": "int8"}
    metrics = reference
    if _catalog_pass(job_type, examples):
        control.report(phase="evaluate")
        metrics = model_metrics(job_type, examples, scorer(fp32, fp32_products), control, "model")
    return metrics, {**check, "metrics_graph": "fp32"}
