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
order of their best score; at most ``per_query`` pairs per query.

Also here: what a labelling queue's selection job is asked (``LabelingOptions``), how its pairs are
shared among the labellers (``assign``), and what closing it computes from the labels: each pair's grade
(the mean of its labels) and the labellers' agreement (Krippendorff's alpha, ordinal, from the
``krippendorff`` package; Cohen's weighted kappa per pair of labellers, from scikit-learn)."""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.feedback import normalize_query


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


# -- a queue's selection job ---------------------------------------------------------------------

MAX_BUDGET = 20_000


class LabelingOptions(BaseModel):
    """What a labelling queue's selection job reads and how it chooses: the settings stored on the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_id: uuid.UUID
    strategy: Strategy
    budget: int = Field(ge=1, le=MAX_BUDGET)
    pool: Literal["dataset", "impressions"]
    split: Literal["train", "valid", "test", "all"] = "train"  # pool=dataset: whose queries
    start: AwareDatetime | None = None  # pool=impressions: the window
    end: AwareDatetime | None = None
    max_queries: int = Field(1000, ge=1, le=MAX_BUDGET)
    candidates_per_query: int = Field(20, ge=2, le=200)
    k: int = Field(10, ge=1, le=100)
    per_query: int | None = Field(None, ge=1, le=200)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    retriever_version_id: uuid.UUID | None = None
    reranker_version_id: uuid.UUID | None = None
    # versions whose judged pairs are not asked again (the pool's, the base the labels will join)
    judged_version_ids: tuple[uuid.UUID, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> LabelingOptions:
        if self.pool == "impressions" and (self.start is None or self.end is None):
            raise ValueError("an impressions pool needs its window (start and end)")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("the window's start must be before its end")
        if self.strategy == Strategy.uncertainty and self.reranker_version_id is None:
            raise ValueError("uncertainty sampling needs a reranker (a cross-encoder version)")
        return self


@dataclass(frozen=True)
class Candidate:
    query: str
    product_id: str
    product_text: str


# -- sharing the pairs out -----------------------------------------------------------------------


def assign(
    items: int,
    labellers: Sequence[uuid.UUID],
    per_item: int,
    policy: str,
    load: Mapping[uuid.UUID, int] | None = None,
) -> list[list[uuid.UUID]]:
    """Who labels each of ``items`` pairs (in order): ``per_item`` different labellers each.

    ``round_robin`` deals the labels out in turn, so everyone gets the same share (±1);
    ``least_loaded`` gives each label to whoever has the fewest waiting, counting ``load`` (what each
    already has waiting elsewhere) and what this queue has given so far; ties go in list order."""
    people = list(dict.fromkeys(labellers))
    if not 1 <= per_item <= len(people):
        raise ValueError("each pair needs between one and as many labellers as the queue has")
    if policy == "round_robin":
        deal = itertools.cycle(range(len(people)))
        out = []
        for _ in range(items):
            out.append([people[next(deal)] for _ in range(per_item)])
        return out
    waiting = {person: int((load or {}).get(person, 0)) for person in people}
    out = []
    for _ in range(items):
        chosen = sorted(people, key=lambda p: (waiting[p], people.index(p)))[:per_item]
        for person in chosen:
            waiting[person] += 1
        out.append(chosen)
    return out


# -- closing: grades and agreement -------------------------------------------------------------


def final_grades(labels: Mapping[Any, Sequence[int]]) -> dict[Any, float]:
    """Each pair's grade: the mean of its labels (as Home Depot's judges were averaged); pairs nobody
    graded (all skipped) are left out."""
    return {item: float(np.mean(grades)) for item, grades in labels.items() if grades}


def agreement(
    labels: Mapping[Any, Mapping[uuid.UUID, int]], min_grade: int, max_grade: int
) -> dict[str, Any]:
    """How much the labellers agree on the pairs two or more of them graded: Krippendorff's alpha
    (ordinal; any number of labellers, missing labels allowed), the share of such pairs graded alike,
    and Cohen's kappa (quadratic weights) for each two labellers who graded at least two pairs in
    common. A figure that cannot be computed (too few shared pairs, or no variation) is None."""
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    shared = {item: by for item, by in labels.items() if len(by) >= 2}
    people = sorted({person for by in shared.values() for person in by}, key=str)
    report: dict[str, Any] = {
        "pairs_labelled_twice": len(shared),
        "labellers": len(people),
        "krippendorff_alpha": None,
        "exact_agreement": None,
        "cohen_kappa": [],
    }
    if not shared:
        return report
    report["exact_agreement"] = round(
        sum(1 for by in shared.values() if len(set(by.values())) == 1) / len(shared), 4
    )
    matrix = np.full((len(people), len(shared)), np.nan)
    row = {person: i for i, person in enumerate(people)}
    for column, by in enumerate(shared.values()):
        for person, grade in by.items():
            matrix[row[person], column] = grade
    values = np.unique(matrix[~np.isnan(matrix)])
    if len(values) >= 2:
        domain = np.arange(min_grade, max_grade + 1, dtype=np.float64)
        alpha = krippendorff.alpha(
            reliability_data=matrix, level_of_measurement="ordinal", value_domain=domain
        )
        report["krippendorff_alpha"] = None if math.isnan(alpha) else round(float(alpha), 4)
    for a, b in itertools.combinations(people, 2):
        both = [by for by in shared.values() if a in by and b in by]
        if len(both) < 2:
            continue
        first, second = [by[a] for by in both], [by[b] for by in both]
        kappa = None
        if len(set(first) | set(second)) >= 2:
            score = cohen_kappa_score(
                first, second, weights="quadratic", labels=list(range(min_grade, max_grade + 1))
            )
            kappa = None if math.isnan(score) else round(float(score), 4)
        report["cohen_kappa"].append({"labellers": [str(a), str(b)], "pairs": len(both), "kappa": kappa})
    return report


def labels_table(grades: Mapping[tuple[str, str], float]) -> pa.Table:
    """(query, product) -> grade as relevance rows, in the order given."""
    return pa.table(
        {
            "query": pa.array([q for q, _ in grades], pa.string()),
            "product_id": pa.array([p for _, p in grades], pa.string()),
            "grade": pa.array(list(grades.values()), pa.float64()),
        }
    )


def merge_labels(labels: pa.Table, base: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The queue's labels beside a base version's judgments (query, product_id, grade); where both grade
    a pair (queries compared as searches are: case and spacing aside), the newer label wins."""
    labelled = {
        (normalize_query(q), p)
        for q, p in zip(labels["query"].to_pylist(), labels["product_id"].to_pylist(), strict=True)
    }
    kept = [
        i
        for i, (q, p) in enumerate(
            zip(base["query"].to_pylist(), base["product_id"].to_pylist(), strict=True)
        )
        if (normalize_query(q), p) not in labelled
    ]
    older = base.select(["query", "product_id", "grade"]).take(pa.array(kept, pa.int64())).cast(labels.schema)
    return pa.concat_tables([labels, older]), {"labels": labels.num_rows, "base": len(kept)}
