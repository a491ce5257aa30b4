"""Evaluation helpers of the trainer, checked against ir_measures (pytrec_eval, i.e. trec_eval) and by hand."""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import bm25s
import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from services.trainer.evaluation import (
    _ranking_order,
    classification_metrics,
    ranking_metrics,
    rmse,
    run_from_scores,
)
from shared.search import BM25Index

HOMEDEPOT_DEV = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "homedepot" / "relevance_dev.csv"
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


# ---------------------------------------------------------------- BM25


CATALOG = {
    "p1": "DEWALT 20V MAX Cordless Drill with Lithium-Ion Battery",
    "p2": "Flexzilla 50 ft. Garden Hose",
    "p3": "Philips 60-Watt Equivalent Soft White LED Light Bulb",
    "p4": "Drill Bit Set for Wood and Metal (29-Piece)",
    "p5": "BEHR Ultra Pure White Interior Paint",
    "p6": "The Hose Reel Cart",
}


@pytest.fixture(scope="module")
def catalog_index() -> BM25Index:
    return BM25Index(list(CATALOG), list(CATALOG.values()))


def test_bm25_doc_sharing_query_words_ranks_first(catalog_index: BM25Index) -> None:
    results = catalog_index.search(["garden hose", "white led bulb", "cordless drill battery"], k=3)
    assert [hits[0][0] for hits in results] == ["p2", "p3", "p1"]
    assert all([s for _, s in hits] == sorted((s for _, s in hits), reverse=True) for hits in results)


def test_bm25_score_agrees_with_search(catalog_index: BM25Index) -> None:
    query = "white drill for metal"
    hits = catalog_index.search([query], k=10)[0]
    ids = [doc for doc, _ in hits]
    scores = catalog_index.score(query, ids)
    assert scores.tolist() == [s for _, s in hits]
    assert list(scores) == sorted(scores, reverse=True)
    assert catalog_index.score(query, ["p2", "p6"]).tolist() == [0.0, 0.0]
    assert {"p1", "p3", "p4", "p5"} == set(ids)


def test_bm25_k_larger_than_corpus_and_empty_queries(catalog_index: BM25Index) -> None:
    drill, nothing, stopwords = catalog_index.search(["drill", "xyzzy", "the and of"], k=100)
    assert {doc for doc, _ in drill} == {"p1", "p4"}  # only documents sharing a term
    assert nothing == [] and stopwords == []
    assert len(catalog_index.search(["white"], k=1)[0]) == 1
    with pytest.raises(ValueError):
        catalog_index.search(["drill"], k=0)


def test_bm25_unknown_id_raises(catalog_index: BM25Index) -> None:
    with pytest.raises(KeyError, match="p404"):
        catalog_index.score("drill", ["p1", "p404"])


def test_bm25_constructor_validates() -> None:
    with pytest.raises(ValueError):
        BM25Index(["a", "a"], ["x", "y"])
    with pytest.raises(ValueError):
        BM25Index(["a"], ["x", "y"])
    with pytest.raises(ValueError):
        BM25Index([], [])


def test_bm25_scores_match_plain_bm25s() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choices(words, k=rng.randrange(1, 12))) for _ in range(300)]
    queries = [" ".join(rng.choices(words, k=rng.randrange(1, 4))) for _ in range(20)]
    index = BM25Index([f"d{i}" for i in range(len(texts))], texts)
    plain = bm25s.BM25()
    plain.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    docs, scores = plain.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=len(texts), show_progress=False
    )
    for hits, row_docs, row_scores in zip(index.search(queries, k=len(texts)), docs, scores, strict=True):
        positive = row_scores > 0
        assert [s for _, s in hits] == pytest.approx(row_scores[positive].tolist(), rel=1e-6)
        assert {d for d, _ in hits} == {f"d{i}" for i in row_docs[positive]}


def load_homedepot(path: Path) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    titles: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    with path.open(encoding="iso-8859-1", newline="") as f:
        for row in csv.DictReader(f):
            titles.setdefault(row["product_uid"], row["product_title"])
            qrels[row["search_term"]][row["product_uid"]] = float(row["relevance"])
    return titles, dict(qrels)


@pytest.mark.skipif(
    not HOMEDEPOT_DEV.exists(), reason=f"Home Depot dev relevance data not found at {HOMEDEPOT_DEV}"
)
def test_bm25_reranking_beats_random_on_homedepot() -> None:
    titles, qrels = load_homedepot(HOMEDEPOT_DEV)
    index = BM25Index(list(titles), list(titles.values()))
    query_ids = list(qrels)
    candidates = [list(qrels[q]) for q in query_ids]
    bm25_scores = [index.score(q, docs) for q, docs in zip(query_ids, candidates, strict=True)]

    bm25 = ranking_metrics(run_from_scores(query_ids, candidates, bm25_scores), qrels)["ndcg@10"]
    reverse = ranking_metrics(run_from_scores(query_ids, candidates, [-s for s in bm25_scores]), qrels)[
        "ndcg@10"
    ]
    rng = np.random.default_rng(0)
    randoms = [
        ranking_metrics(
            run_from_scores(query_ids, candidates, [rng.random(len(c)) for c in candidates]), qrels
        )["ndcg@10"]
        for _ in range(3)
    ]
    # Graded gains of 1-3 keep every ordering's nDCG high; the random spread is about 2e-4.
    assert bm25 > max(randoms) + 0.003, (bm25, randoms)
    assert reverse < min(randoms) - 0.003, (reverse, randoms)
