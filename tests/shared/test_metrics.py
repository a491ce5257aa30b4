"""The ranking and classification metrics, checked against ir_measures (pytrec_eval, i.e. trec_eval) and
by hand."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from shared.metrics import (
    _ranking_order,
    classification_metrics,
    ranking_metrics,
    rmse,
    run_from_scores,
)

Run = Mapping[str, Mapping[str, float]]


def reference(
    run: Run,
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 10,
    recall_ks: tuple[int, ...] = (10, 100),
    rel: int = 1,
) -> dict[str, float]:
    """The same numbers from ir_measures' pytrec_eval provider, which ranks ties as trec_eval does.

    ir_measures' default RR@k goes to its msmarco provider, which breaks ties by doc id ascending; trec_eval's
    uncut reciprocal rank truncated at k is used instead (1/rank >= 1/k means rank <= k).
    """
    measures = [nDCG @ k, RR(rel=rel), *(R(rel=rel) @ c for c in recall_ks)]
    per_query: dict[object, dict[str, float]] = defaultdict(dict)
    for metric in ir_measures.pytrec_eval.iter_calc(measures, qrels, run):
        per_query[metric.measure][metric.query_id] = metric.value
    with_relevant = [q for q, judged in qrels.items() if any(g >= rel for g in judged.values())]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    rr = [per_query[RR(rel=rel)].get(q, 0.0) for q in with_relevant]
    out = {
        f"ndcg@{k}": mean([per_query[nDCG @ k].get(q, 0.0) for q in qrels]),
        f"mrr@{k}": mean([v if v >= 1 / k else 0.0 for v in rr]),
    }
    for c in recall_ks:
        out[f"recall@{c}"] = mean([per_query[R(rel=rel) @ c].get(q, 0.0) for q in with_relevant])
    out["queries"] = len(qrels)
    return out


def assert_same(ours: Mapping[str, float], theirs: Mapping[str, float]) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, rel=0), key


# ---------------------------------------------------------------- ranking metrics


def test_perfect_ranking_scores_one() -> None:
    qrels = {"q1": {"a": 3, "b": 2, "c": 1}}
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7, "x": 0.1}}
    assert ranking_metrics(run, qrels) == {
        "ndcg@10": 1.0,
        "mrr@10": 1.0,
        "recall@10": 1.0,
        "recall@100": 1.0,
        "queries": 1,
    }


def test_hand_computed_case() -> None:
    qrels = {
        "q1": {"a": 2, "b": 0, "c": 1},
        "q2": {"z": 1},  # missing from the run: scores 0
        "q3": {"w": 0},  # no relevant doc: nDCG 0, left out of MRR and recall
    }
    run = {
        "q1": {"x": 0.9, "c": 0.8, "a": 0.7, "b": 0.1},  # x is unjudged
        "q3": {"w": 1.0},
        "q9": {"a": 1.0},  # not judged: ignored
    }
    ndcg_q1 = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
    expected = {
        "ndcg@10": ndcg_q1 / 3,
        "mrr@10": (1 / 2 + 0) / 2,
        "recall@10": (1 + 0) / 2,
        "recall@100": (1 + 0) / 2,
        "queries": 3,
    }
    assert_same(ranking_metrics(run, qrels), expected)
    assert_same(ranking_metrics(run, qrels), reference(run, qrels))


def test_cutoffs() -> None:
    qrels = {"q1": {"d10": 1, "d50": 2}}
    run = {"q1": {f"d{i:02d}": 100.0 - i for i in range(60)}}  # d10 at rank 11, d50 at rank 51
    result = ranking_metrics(run, qrels)
    assert result["mrr@10"] == 0.0
    assert result["recall@10"] == 0.0
    assert result["recall@100"] == 1.0
    assert result["ndcg@10"] == 0.0
    assert_same(result, reference(run, qrels))
    custom = ranking_metrics(run, qrels, k=20, recall_ks=(11, 50, 51))
    assert custom == pytest.approx(
        {
            "ndcg@20": (1 / math.log2(12)) / (2 + 1 / math.log2(3)),
            "mrr@20": 1 / 11,
            "recall@11": 0.5,
            "recall@50": 0.5,
            "recall@51": 1.0,
            "queries": 1,
        }
    )
    assert_same(custom, reference(run, qrels, k=20, recall_ks=(11, 50, 51)))


def test_ties_broken_by_doc_id_descending() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b10": 2}}
    run = {"q1": {"a": 1.0, "b": 1.0}, "q2": {"b9": 0.5, "b10": 0.5, "b2": 0.5}}
    result = ranking_metrics(run, qrels)
    # Order: q1 b, a; q2 b9, b2, b10 (string order, descending).
    assert result["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert_same(result, reference(run, qrels))


def test_negative_grades_count_as_zero_gain() -> None:
    qrels = {"q1": {"a": -1, "b": 2, "c": 0}}
    run = {"q1": {"a": 3.0, "c": 2.0, "b": 1.0}}
    result = ranking_metrics(run, qrels)
    assert result["ndcg@10"] == pytest.approx((2 / math.log2(4)) / 2)
    assert_same(result, reference(run, qrels))


def test_relevance_threshold() -> None:
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"c": 1}}
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"c": 1.0}}
    result = ranking_metrics(run, qrels, relevant_from=2)
    assert result["mrr@10"] == 0.5  # q2 has no doc graded 2 or more
    assert result["recall@10"] == 1.0
    assert_same(result, reference(run, qrels, rel=2))


def test_empty_and_invalid_inputs() -> None:
    assert ranking_metrics({}, {}) == {
        "ndcg@10": 0.0,
        "mrr@10": 0.0,
        "recall@10": 0.0,
        "recall@100": 0.0,
        "queries": 0,
    }
    assert ranking_metrics({"q1": {"a": 1.0}}, {"q1": {}})["queries"] == 1
    with pytest.raises(ValueError):
        ranking_metrics({}, {}, k=0)


def random_case(seed: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """~200 queries, graded qrels (-1..3) and heavily tied scores; some queries unranked or unjudged."""
    rng = random.Random(seed)
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i in range(220):
        q = f"q{i}"
        pool = [f"d{rng.randrange(400)}" for _ in range(rng.randrange(1, 40))]
        if i < 200:
            judged = rng.sample(pool, k=min(len(pool), rng.randrange(1, 12)))
            qrels[q] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
        if rng.random() < 0.95:
            extra = [f"u{rng.randrange(1000)}" for _ in range(rng.randrange(0, 150))]
            run[q] = {d: float(rng.randrange(6)) / 2 for d in pool + extra}
    return run, qrels


@pytest.mark.parametrize(
    ("seed", "k", "recall_ks", "rel"),
    [(0, 10, (10, 100), 1), (1, 10, (10, 100), 2), (2, 5, (1, 5, 20), 1), (3, 20, (100,), 3)],
)
def test_random_runs_match_ir_measures(seed: int, k: int, recall_ks: tuple[int, ...], rel: int) -> None:
    run, qrels = random_case(seed)
    result = ranking_metrics(run, qrels, k=k, recall_ks=recall_ks, relevant_from=rel)
    assert result["queries"] == 200
    assert_same(result, reference(run, qrels, k=k, recall_ks=recall_ks, rel=rel))


def test_mrr_matches_ir_measures_default_pipeline_without_ties() -> None:
    run, qrels = random_case(4)
    rng = random.Random(4)
    untied = {q: {d: s + rng.random() * 0.1 for d, s in docs.items()} for q, docs in run.items()}
    with_relevant = {q: j for q, j in qrels.items() if any(g >= 2 for g in j.values())}
    expected = ir_measures.calc_aggregate([RR(rel=2) @ 10], with_relevant, untied)[RR(rel=2) @ 10]
    assert ranking_metrics(untied, qrels, relevant_from=2)["mrr@10"] == pytest.approx(expected, abs=1e-9)


def test_ranking_order_fallback_matches_fast_path() -> None:
    rng = np.random.default_rng(0)
    query = np.repeat(np.arange(50, dtype=np.int64), 20)
    scores = rng.integers(0, 4, query.size).astype(np.float64)
    codes = np.concatenate([rng.permutation(100)[:20] for _ in range(50)]).astype(np.int64)
    fast = _ranking_order(query, scores, codes, 100)
    assert np.array_equal(fast, _ranking_order(query, scores, codes, 2**60))  # too wide for one int64 key
    assert np.array_equal(fast, np.lexsort((-codes, -scores, query)))


# ---------------------------------------------------------------- other metrics


def test_classification_metrics_by_hand() -> None:
    y_true = ["cat", "cat", "dog", "dog", "dog", "bird"]
    y_pred = ["cat", "dog", "dog", "dog", "cat", "fish"]
    result = classification_metrics(y_true, y_pred)
    assert result["accuracy"] == pytest.approx(3 / 6)
    # cat: 1 of 2 predictions right, 1 of 2 found; dog: 2 of 3 and 2 of 3; bird and fish: 0.
    assert result["per_class"] == {
        "bird": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "cat": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "dog": {
            "precision": pytest.approx(2 / 3),
            "recall": pytest.approx(2 / 3),
            "f1": pytest.approx(2 / 3),
            "support": 3,
        },
        "fish": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    }
    assert result["macro_f1"] == pytest.approx((0 + 0.5 + 2 / 3 + 0) / 4)


def test_classification_metrics_edge_cases() -> None:
    assert classification_metrics([], []) == {"accuracy": 0.0, "macro_f1": 0.0, "per_class": {}}
    assert classification_metrics(["a", "b"], ["a", "b"])["macro_f1"] == 1.0
    with pytest.raises(ValueError):
        classification_metrics(["a"], [])


def test_rmse() -> None:
    assert rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))
    assert rmse([2.5], [2.5]) == 0.0
    with pytest.raises(ValueError):
        rmse([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        rmse([], [])


def test_run_from_scores() -> None:
    run = run_from_scores(["q1", "q2"], [["a", "b"], ["c"]], [np.array([0.5, 0.25]), [1.0]])
    assert run == {"q1": {"a": 0.5, "b": 0.25}, "q2": {"c": 1.0}}
    assert run_from_scores(["q1"], [["a", "b"]], np.array([[1.0, 2.0]])) == {"q1": {"a": 1.0, "b": 2.0}}
    with pytest.raises(ValueError):
        run_from_scores(["q1"], [["a", "b"]], [[1.0]])
    with pytest.raises(ValueError):
        run_from_scores(["q1", "q1"], [["a"], ["a"]], [[1.0], [1.0]])
