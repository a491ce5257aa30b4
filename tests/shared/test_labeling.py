"""Selecting pairs to judge (the strategies' scores and the spread across queries), sharing them among
labellers, and what closing a queue computes (grades, agreement, the merge with a base)."""

from __future__ import annotations

import uuid
from collections import Counter

import krippendorff
import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import cohen_kappa_score

from shared.labeling import (
    Strategy,
    agreement,
    assign,
    diverse_pick,
    final_grades,
    labels_table,
    merge_labels,
    per_query_cap,
    select,
    top_k_membership,
    uncertainty,
    vote_entropy,
)


def test_uncertainty_is_highest_at_the_decision_boundary() -> None:
    scores = uncertainty(np.array([-6.0, -0.1, 0.0, 0.3, 5.0]))
    assert int(np.argmax(scores)) == 2
    assert scores[1] > scores[3] > scores[4] and scores[1] > scores[0]


def test_vote_entropy_is_zero_when_the_committee_agrees_and_one_bit_at_an_even_split() -> None:
    # rows: members; columns: candidates (all in, two of four, all out, one of four)
    votes = np.array([[True, True, False, True], [True, False, False, False], [True, True, False, False],
                      [True, False, False, False]])  # fmt: skip
    entropy = vote_entropy(votes)
    assert entropy[0] == 0 and entropy[2] == 0  # all in, all out
    assert entropy[1] == pytest.approx(1.0)  # two of four
    assert 0 < entropy[3] < 1  # one of four
    with pytest.raises(ValueError, match="two members"):
        vote_entropy(votes[:1])


def test_top_k_membership_is_per_query() -> None:
    queries = ["a", "a", "a", "b", "b"]
    member = top_k_membership(np.array([0.1, 0.9, 0.5, 0.2, 0.3]), queries, k=2)
    assert member.tolist() == [False, True, True, True, True]


def test_picks_go_round_the_queries_before_a_second_pick_from_any() -> None:
    queries = ["a"] * 5 + ["b"] * 2 + ["c"] * 3
    scores = np.array([9, 8, 7, 6, 5, 4, 3, 2.5, 2, 1], dtype=float)
    picked = diverse_pick(scores, queries, budget=6, per_query=3)
    assert [queries[i] for i in picked] == ["a", "b", "c", "a", "b", "c"]
    assert picked[:3] == [0, 5, 7]  # each query's most informative first
    capped = diverse_pick(scores, queries, budget=10, per_query=2)
    assert len(capped) == 6 and max(np.unique([queries[i] for i in capped], return_counts=True)[1]) == 2


def test_select_by_each_strategy() -> None:
    rng = np.random.default_rng(0)
    queries = [f"q{i // 10}" for i in range(100)]
    logits = rng.normal(size=100)
    picked, scores = select(Strategy.uncertainty, queries, 20, rng=rng, reranker_logits=logits)
    assert len(picked) == 20 and len(set(picked)) == 20
    assert len({queries[i] for i in picked}) == 10  # two from each of the ten queries
    for query in {queries[i] for i in picked}:  # each query's picks are its most uncertain
        rows = [i for i in range(100) if queries[i] == query]
        best = sorted(rows, key=lambda i: abs(logits[i]))[:2]
        assert {i for i in picked if queries[i] == query} == set(best)
    bm25, dense = rng.random(100), rng.random(100)
    picked, scores = select(Strategy.committee, queries, 10, rng=rng, rankers=[bm25, dense], k=3)
    assert len(picked) == 10 and all(scores[i] >= 0 for i in picked)
    picked, _ = select(Strategy.random, queries, 30, rng=np.random.default_rng(1))
    assert len(set(picked)) == 30
    with pytest.raises(ValueError, match="reranker"):
        select(Strategy.uncertainty, queries, 5, rng=rng)
    with pytest.raises(ValueError, match="two rankers"):
        select(Strategy.committee, queries, 5, rng=rng, rankers=[bm25])


def test_the_cap_spreads_the_budget() -> None:
    assert per_query_cap(500, 1000) == 2
    assert per_query_cap(500, 100) == 10
    assert per_query_cap(10, 0) == 2


# -- sharing pairs out, and what closing computes -------------------------------------------------

A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def test_round_robin_deals_distinct_labellers_in_turn() -> None:
    dealt = assign(5, [A, B, C], 2, "round_robin")
    assert dealt == [[A, B], [C, A], [B, C], [A, B], [C, A]]
    shares = Counter(person for people in dealt for person in people)
    assert max(shares.values()) - min(shares.values()) <= 1


def test_least_loaded_counts_what_is_waiting_elsewhere() -> None:
    dealt = assign(4, [A, B, C], 1, "least_loaded", {A: 3, B: 0, C: 1})
    assert dealt == [[B], [B], [C], [B]]  # B has nothing waiting, C one, A three
    with pytest.raises(ValueError, match="between one and"):
        assign(1, [A], 2, "round_robin")


def test_agreement_matches_the_reference_figures() -> None:
    # two labellers' grades of nine pairs, against the package and scikit-learn called directly (the
    # matrix's orientation, the scale's domain and the kappa's weights are what is checked)
    first = [1, 2, 3, 3, 2, 1, 4, 1, 2]
    second = [1, 2, 3, 3, 2, 2, 4, 1, 2]
    labels = {i: {A: a, B: b} for i, (a, b) in enumerate(zip(first, second, strict=True))}
    labels[99] = {A: 4}  # labelled once: not part of agreement
    found = agreement(labels, 0, 4)
    assert found["pairs_labelled_twice"] == 9 and found["exact_agreement"] == round(8 / 9, 4)
    expected_alpha = krippendorff.alpha(
        reliability_data=np.array([first, second], dtype=float),
        level_of_measurement="ordinal",
        value_domain=np.arange(0, 5, dtype=float),
    )
    assert found["krippendorff_alpha"] == pytest.approx(expected_alpha, abs=1e-4)
    [kappa] = found["cohen_kappa"]
    assert kappa["kappa"] == pytest.approx(
        cohen_kappa_score(first, second, weights="quadratic", labels=list(range(5))), abs=1e-4
    )
    assert 0.8 < found["krippendorff_alpha"] < 1
    same = agreement({1: {A: 2, B: 2}, 2: {A: 2, B: 2}}, 0, 3)
    assert same["exact_agreement"] == 1.0 and same["krippendorff_alpha"] is None  # no variation: undefined
    assert agreement({1: {A: 2}}, 0, 3)["pairs_labelled_twice"] == 0


def test_labels_are_averaged_and_win_over_the_base() -> None:
    assert final_grades({"x": [3, 2], "y": [], "z": [0]}) == {"x": 2.5, "z": 0.0}
    labels = labels_table({("Cordless Drill", "p1"): 2.5, ("saw", "p2"): 0.0})
    base = pa.table({"query": ["cordless  drill", "hose"], "product_id": ["p1", "p3"], "grade": [1.0, 3.0]})
    merged, sources = merge_labels(labels, base)
    assert sources == {"labels": 2, "base": 1}
    assert merged.to_pylist() == [
        {"query": "Cordless Drill", "product_id": "p1", "grade": 2.5},
        {"query": "saw", "product_id": "p2", "grade": 0.0},
        {"query": "hose", "product_id": "p3", "grade": 3.0},
    ]
