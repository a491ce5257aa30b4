"""Selecting pairs to judge: the strategies' scores and the spread across queries."""

from __future__ import annotations

import numpy as np
import pytest

from shared.labeling import (
    Strategy,
    diverse_pick,
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
