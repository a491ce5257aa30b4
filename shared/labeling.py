"""Which (query, product) pairs people should judge next: selection for ranking, not for classification.

A pool of candidate pairs (each query's products as the models retrieve them) is scored by a strategy and
a budget of pairs is picked with diversity across queries:

- ``random``: every candidate alike (the control);
- ``uncertainty``: the reranker's probability of relevance nearest its decision boundary (0.5: the
  cross-encoder is fitted to grades scaled to 0..1);
- ``committee``: how much the rankers (BM25, the retriever, the reranker and, with impressions, the click
  model) disagree about whether the product belongs in the query's top ``k`` (vote entropy: highest when
  half of them put it there).

Diversity: each query's candidates are ranked by the strategy's score, and the picks go round the queries
by that rank (every query's most informative pair before any query's second), the queries taken in the
order of their best score; at most ``per_query`` pairs per query."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np


class Strategy(StrEnum):
    random = "random"
    uncertainty = "uncertainty"
    committee = "committee"


def uncertainty(logits: np.ndarray) -> np.ndarray:
    """Higher for a pair whose relevance the reranker is less sure of: minus the distance of its
    probability from 0.5."""
    probability = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return -np.abs(probability - 0.5)


def top_k_membership(scores: np.ndarray, queries: Sequence[str], k: int) -> np.ndarray:
    """For one ranker's ``scores`` of every candidate: whether each is among its query's ``k`` best (ties
    broken by position, so the count per query is exactly min(k, candidates))."""
    scores = np.asarray(scores, dtype=np.float64)
    member = np.zeros(len(scores), dtype=bool)
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        by_query.setdefault(query, []).append(i)
    for rows in by_query.values():
        order = sorted(rows, key=lambda i: (-scores[i], i))
        member[order[:k]] = True
    return member


def vote_entropy(memberships: np.ndarray) -> np.ndarray:
    """Disagreement of a committee (rows: members, columns: candidates, True: in the member's top k):
    the binary entropy of the share of members that vote "in", 0 when all agree, 1 bit at an even split."""
    votes = np.asarray(memberships, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[0] < 2:
        raise ValueError("a committee has at least two members")
    share = votes.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(share * np.log2(share) + (1 - share) * np.log2(1 - share))
    result: np.ndarray = np.nan_to_num(entropy, nan=0.0)
    return result


def diverse_pick(scores: np.ndarray, queries: Sequence[str], budget: int, per_query: int) -> list[int]:
    """Up to ``budget`` candidate indices: each query's candidates by descending score, taken round the
    queries rank by rank (queries in the order of their best score), at most ``per_query`` from one."""
    if budget < 0 or per_query < 1:
        raise ValueError("budget must be >= 0 and per_query >= 1")
    scores = np.asarray(scores, dtype=np.float64)
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        by_query.setdefault(query, []).append(i)
    ranked = {q: sorted(rows, key=lambda i: (-scores[i], i))[:per_query] for q, rows in by_query.items()}
    order = sorted(ranked, key=lambda q: (-scores[ranked[q][0]], ranked[q][0]))
    picked: list[int] = []
    for depth in range(per_query):
        for query in order:
            rows = ranked[query]
            if depth < len(rows):
                picked.append(rows[depth])
                if len(picked) == budget:
                    return picked
    return picked


def per_query_cap(budget: int, queries: int, floor: int = 2) -> int:
    """A cap that spreads ``budget`` over ``queries`` while leaving room where some have few candidates."""
    if queries <= 0:
        return floor
    return max(floor, math.ceil(2 * budget / queries))


def select(
    strategy: Strategy,
    queries: Sequence[str],
    budget: int,
    *,
    rng: np.random.Generator,
    reranker_logits: np.ndarray | None = None,
    rankers: Sequence[np.ndarray] = (),
    k: int = 10,
    per_query: int | None = None,
) -> tuple[list[int], np.ndarray]:
    """The candidates to judge (indices into ``queries``, the query of each candidate) and every
    candidate's score under ``strategy``.

    ``uncertainty`` needs ``reranker_logits``; ``committee`` needs at least two ``rankers`` (each a score
    per candidate, higher is better). Ties, and every score of ``random``, are broken by ``rng``."""
    n = len(queries)
    jitter = rng.random(n) * 1e-9  # breaks ties without reordering distinct scores
    if strategy == Strategy.random:
        scores = rng.random(n)
    elif strategy == Strategy.uncertainty:
        if reranker_logits is None or len(reranker_logits) != n:
            raise ValueError("uncertainty sampling needs the reranker's logit of every candidate")
        scores = uncertainty(reranker_logits) + jitter
    else:
        if len(rankers) < 2 or any(len(r) != n for r in rankers):
            raise ValueError("committee sampling needs at least two rankers' scores of every candidate")
        memberships = np.stack([top_k_membership(r, queries, k) for r in rankers])
        scores = vote_entropy(memberships) + jitter
    cap = per_query or per_query_cap(budget, len(set(queries)))
    return diverse_pick(scores, queries, budget, cap), scores
