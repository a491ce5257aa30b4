"""Search: BM25 checked against plain bm25s and by hand, and exact dense top-k."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import bm25s
import numpy as np
import pytest

from shared.metrics import ranking_metrics, run_from_scores
from shared.search import BM25Index, dense_top_k
from tests.support.data import HOMEDEPOT, needs_homedepot

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


@needs_homedepot
def test_bm25_reranking_beats_random_on_homedepot() -> None:
    titles, qrels = load_homedepot(HOMEDEPOT)
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


def test_dense_top_k_ranks_by_dot_product_and_skips_excluded() -> None:
    ids = ["a", "b", "c", "d"]
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    run = dense_top_k(["q1", "q2"], queries, ids, vectors, 2, {"q1": {"a", "zz"}})
    assert run["q1"] == pytest.approx({"b": 0.8, "c": 0.0})  # "a" is excluded; unknown ids are ignored
    assert run["q2"] == pytest.approx({"c": 1.0, "b": 0.6})
    assert dense_top_k(["q"], queries[:1], ids, vectors, 10)["q"].keys() == set(ids)
