"""Ranking and classification metrics: pure functions of runs, judgments and labels (numpy only).

Ranking metrics follow trec_eval conventions (as used by pytrec_eval and ir_measures): a run is ordered by
score descending, ties broken by document id descending. The trainer scores models with them, and the
benchmarks score what the services return with the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CATALOG_DEPTH",
    "classification_metrics",
    "ranking_metrics",
    "rmse",
    "run_from_scores",
]

# How deep retrieval from a whole catalog is evaluated: Recall@100 is the deepest cutoff reported.
CATALOG_DEPTH = 100

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _group_ranks(group: IntArray, sizes: IntArray) -> IntArray:
    """0-based position of each element inside its group, for elements sorted by group."""
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    return np.arange(group.size, dtype=np.int64) - starts[group]


def _ranking_order(query: IntArray, scores: FloatArray, codes: IntArray, n_codes: int) -> IntArray:
    """Permutation sorting entries by query, then score descending, then doc code descending."""
    distinct, score_rank = np.unique(-scores, return_inverse=True)
    n_queries = int(query.max()) + 1 if query.size else 0
    if n_queries * distinct.size * n_codes < 2**62:
        # One int64 key per entry: much faster to sort than three lexsort keys.
        key = (query * distinct.size + score_rank.reshape(-1)) * n_codes + (n_codes - 1 - codes)
        return np.argsort(key)
    return np.lexsort((-codes, -scores, query))


def _discount(ranks: IntArray) -> FloatArray:
    return 1.0 / np.log2(ranks.astype(np.float64) + 2.0)


def ranking_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, float]],
    *,
    k: int = 10,
    recall_ks: Sequence[int] = (10, 100),
    relevant_from: float = 1.0,
) -> dict[str, float]:
    """nDCG@k, MRR@k and Recall@K of a run (query -> doc -> score) against qrels (query -> doc -> grade).

    Only queries in ``qrels`` are evaluated; one missing from ``run`` scores 0. Each run is ranked by score
    descending, ties broken by doc id descending (trec_eval order). Unjudged documents have gain 0.

    - nDCG@k: gain = grade (negative grades count as 0), discount 1/log2(rank + 1), normalised by the DCG@k
      of the judged documents sorted by grade; 0 when no document has a positive grade. Averaged over all
      evaluated queries.
    - MRR@k and Recall@K: binary relevance, grade >= ``relevant_from``. Queries without any relevant
      document are skipped (left out of these two averages).

    Returns ``ndcg@{k}``, ``mrr@{k}``, ``recall@{K}`` for each K in ``recall_ks``, and ``queries`` (the
    number of evaluated queries).
    """
    if k < 1 or any(c < 1 for c in recall_ks):
        raise ValueError("cutoffs must be >= 1")
    recall_cutoffs = list(dict.fromkeys(int(c) for c in recall_ks))
    qids = list(qrels)
    n_q = len(qids)

    # Flatten qrels: query index, doc id, grade.
    qrel_sizes = np.fromiter((len(qrels[q]) for q in qids), dtype=np.int64, count=n_q)
    qrel_docs: list[str] = []
    qrel_grades: list[float] = []
    for q in qids:
        judgments = qrels[q]
        qrel_docs.extend(judgments.keys())
        qrel_grades.extend(judgments.values())
    qrel_q = np.repeat(np.arange(n_q, dtype=np.int64), qrel_sizes)
    grades = np.asarray(qrel_grades, dtype=np.float64)

    # Flatten the run, restricted to evaluated queries.
    run_sizes = np.zeros(n_q, dtype=np.int64)
    run_docs: list[str] = []
    run_scores: list[float] = []
    for i, q in enumerate(qids):
        ranked = run.get(q)
        if ranked:
            run_sizes[i] = len(ranked)
            run_docs.extend(ranked.keys())
            run_scores.extend(ranked.values())
    run_q = np.repeat(np.arange(n_q, dtype=np.int64), run_sizes)
    scores = np.asarray(run_scores, dtype=np.float64)

    # Doc codes whose integer order is the string order, so sorting codes sorts ids.
    code_of = {doc: i for i, doc in enumerate(sorted(set(run_docs).union(qrel_docs)))}
    n_docs = max(len(code_of), 1)
    qrel_codes = np.fromiter(map(code_of.__getitem__, qrel_docs), dtype=np.int64, count=len(qrel_docs))
    run_codes = np.fromiter(map(code_of.__getitem__, run_docs), dtype=np.int64, count=len(run_docs))

    # Rank the run: query, then score descending, then doc id descending.
    order = _ranking_order(run_q, scores, run_codes, n_docs)
    run_q, run_codes = run_q[order], run_codes[order]
    ranks = _group_ranks(run_q, run_sizes)
    depth = max([k, *recall_cutoffs])
    top = ranks < depth
    run_q, run_codes, ranks = run_q[top], run_codes[top], ranks[top]

    # Look up each ranked document's grade.
    qrel_keys = qrel_q * n_docs + qrel_codes
    key_order = np.argsort(qrel_keys, kind="stable")
    sorted_keys, sorted_grades = qrel_keys[key_order], grades[key_order]
    run_keys = run_q * n_docs + run_codes
    judged = np.zeros(run_keys.size, dtype=bool)
    run_grades = np.zeros(run_keys.size)
    if sorted_keys.size:
        pos = np.minimum(np.searchsorted(sorted_keys, run_keys), sorted_keys.size - 1)
        judged = sorted_keys[pos] == run_keys
        run_grades = np.where(judged, sorted_grades[pos], 0.0)

    # nDCG@k.
    in_k = ranks < k
    gains = np.maximum(run_grades, 0.0)
    dcg = np.bincount(run_q[in_k], weights=gains[in_k] * _discount(ranks[in_k]), minlength=n_q)
    ideal_order = np.lexsort((-grades, qrel_q))
    ideal_gains = np.maximum(grades[ideal_order], 0.0)
    ideal_ranks = _group_ranks(qrel_q[ideal_order], qrel_sizes)
    ideal_in_k = ideal_ranks < k
    idcg = np.bincount(
        qrel_q[ideal_order][ideal_in_k],
        weights=ideal_gains[ideal_in_k] * _discount(ideal_ranks[ideal_in_k]),
        minlength=n_q,
    )
    ndcg = np.divide(dcg, idcg, out=np.zeros(n_q), where=idcg > 0)

    # Binary relevance: MRR@k and Recall@K over queries with at least one relevant document.
    n_relevant = np.bincount(qrel_q[grades >= relevant_from], minlength=n_q)
    has_relevant = n_relevant > 0
    relevant = judged & (run_grades >= relevant_from)
    rel_in_k = relevant & in_k
    first_q, first_at = np.unique(run_q[rel_in_k], return_index=True)
    rr = np.zeros(n_q)
    rr[first_q] = 1.0 / (ranks[rel_in_k][first_at] + 1.0)

    def mean_over_relevant(values: FloatArray) -> float:
        return float(values[has_relevant].mean()) if has_relevant.any() else 0.0

    result: dict[str, float] = {
        f"ndcg@{k}": float(ndcg.mean()) if n_q else 0.0,
        f"mrr@{k}": mean_over_relevant(rr),
    }
    for cutoff in recall_cutoffs:
        hits = np.bincount(run_q[relevant & (ranks < cutoff)], minlength=n_q).astype(np.float64)
        recall = np.divide(hits, n_relevant, out=np.zeros(n_q), where=has_relevant)
        result[f"recall@{cutoff}"] = mean_over_relevant(recall)
    result["queries"] = n_q
    return result


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support.

    Labels are those present in ``y_true`` or ``y_pred``; a zero denominator gives 0.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    labels = sorted(set(y_true).union(y_pred))
    if not labels:
        return {"accuracy": 0.0, "macro_f1": 0.0, "per_class": {}}
    index = {label: i for i, label in enumerate(labels)}
    n = len(labels)
    t = np.fromiter((index[y] for y in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((index[y] for y in y_pred), dtype=np.int64, count=len(y_pred))
    tp = np.bincount(t[t == p], minlength=n).astype(np.float64)
    support = np.bincount(t, minlength=n)
    predicted = np.bincount(p, minlength=n)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(tp.sum() / t.size),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
    }


def rmse(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Root mean squared error."""
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if p.shape != a.shape or p.ndim != 1:
        raise ValueError(f"predicted has shape {p.shape}, actual {a.shape}")
    if p.size == 0:
        raise ValueError("rmse of no values")
    return float(np.sqrt(np.mean((p - a) ** 2)))


def run_from_scores(
    query_ids: Sequence[str],
    candidate_ids: Sequence[Sequence[str]],
    scores: Sequence[npt.ArrayLike] | npt.NDArray[Any],
) -> dict[str, dict[str, float]]:
    """Run dict (query -> doc -> score) from each query's candidate ids and their scores."""
    if not len(query_ids) == len(candidate_ids) == len(scores):
        raise ValueError("query_ids, candidate_ids and scores must have the same length")
    run: dict[str, dict[str, float]] = {}
    for qid, docs, row in zip(query_ids, candidate_ids, scores, strict=True):
        values = np.asarray(row, dtype=np.float64).reshape(-1)
        if values.size != len(docs):
            raise ValueError(f"query {qid!r}: {len(docs)} candidates but {values.size} scores")
        if qid in run:
            raise ValueError(f"duplicate query id {qid!r}")
        ranked = dict(zip(docs, values.tolist(), strict=True))
        if len(ranked) != len(docs):
            raise ValueError(f"query {qid!r}: duplicate candidate ids")
        run[qid] = ranked
    return run
