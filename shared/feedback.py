"""Feedback data: what shoppers did with served results, turned into training rows.

``relevance`` rows come from searches (impressions with a query). A position-based click model
(:mod:`shared.clicks`) separates each (query, product) pair's attractiveness from the position it was
shown at; carts and purchases then weigh the pair up by how often a click on it led to one:

    utility = alpha * (1 + cart_weight * carts / clicks + purchase_weight * purchases / clicks)

and the grade is ``max_grade * utility / (1 + cart_weight + purchase_weight)`` (a pair clicked whenever
examined, always carted and bought, grades ``max_grade``). Pairs shown fewer than ``min_impressions``
times are left out: their estimate is mostly noise. Each pair's attractiveness starts from the average
of the project's (empirical Bayes, two impressions' worth), so a pair seen a few times is not graded by
a lucky click.

``sequences`` rows come from each shopper's carts and purchases in time order: the history before each
one, and the item itself as the next item.

Pure functions on plain rows; the trainer's feedback job reads the rows from Postgres and stores what
comes back as dataset versions."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.clicks import fit_pbm

MAX_HISTORY = 50  # the most recent items a sequences row keeps
PRIOR_STRENGTH = 2.0  # impressions' worth of the average attractiveness each pair starts from


@dataclass(frozen=True)
class Served:
    """One impression: what a request showed, best first."""

    request_id: str
    query: str | None
    user_id: str | None
    product_ids: Sequence[str]


@dataclass(frozen=True)
class Action:
    """One click, cart or purchase sent with a request id (or none, for sequences)."""

    request_id: str | None
    product_id: str
    event_type: str
    user_id: str | None
    occurred_at: dt.datetime


class FeedbackOptions(BaseModel):
    """What a feedback job reads and how it grades: the settings stored on the job's row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime = Field(description="The window's start (inclusive), by when results were served.")
    end: AwareDatetime = Field(description="The window's end (exclusive).")
    name: str = Field(
        "feedback",
        min_length=1,
        max_length=180,
        description="The relevance dataset the rows become a version of (created if new); the sequences "
        "rows go to the dataset NAME-sequences.",
    )
    min_impressions: int = Field(
        10, ge=1, le=1_000_000, description="Pairs shown fewer times than this are left out."
    )
    cart_weight: float = Field(2.0, ge=0, le=100, description="How much more a cart counts than a click.")
    purchase_weight: float = Field(
        4.0, ge=0, le=100, description="How much more a purchase counts than a click."
    )
    max_grade: float = Field(3.0, gt=0, le=100, description="The top of the grade scale written.")
    max_rank: int = Field(50, ge=1, le=1000, description="Positions further down are not used.")
    sequences: bool = Field(True, description="Also write sequences rows from shoppers' carts and purchases.")
    split_seed: int = Field(42, ge=0, le=2**31 - 1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> FeedbackOptions:
        if self.start >= self.end:
            raise ValueError("the window's start must be before its end")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        return self


@dataclass
class Relevance:
    table: pa.Table  # query, product_id, grade
    stats: dict[str, Any] = field(default_factory=dict)


def normalize_query(query: str) -> str:
    """Searches that differ only in case and spacing are one query."""
    return re.sub(r"\s+", " ", query).strip().casefold()


def relevance(served: Iterable[Served], actions: Iterable[Action], options: FeedbackOptions) -> Relevance:
    """Graded (query, product) pairs from searches and what was clicked, carted and bought in them."""
    done: dict[str, set[tuple[str, str]]] = defaultdict(set)  # request id -> {(event type, product)}
    for action in actions:
        if action.request_id is not None:
            done[action.request_id].add((action.event_type, action.product_id))
    pair_index: dict[tuple[str, str], int] = {}
    pairs: list[int] = []
    ranks: list[int] = []
    clicked: list[bool] = []
    searches = 0
    rank_seen: dict[int, set[int]] = defaultdict(set)
    carts: dict[int, int] = defaultdict(int)
    purchases: dict[int, int] = defaultdict(int)
    for impression in served:
        if impression.query is None:
            continue
        query = normalize_query(impression.query)
        if not query:
            continue
        searches += 1
        outcome = done.get(impression.request_id, set())
        for rank, product in enumerate(impression.product_ids[: options.max_rank]):
            index = pair_index.setdefault((query, product), len(pair_index))
            pairs.append(index)
            ranks.append(rank)
            clicked.append(("click", product) in outcome)
            rank_seen[index].add(rank)
            carts[index] += int(("cart", product) in outcome)
            purchases[index] += int(("purchase", product) in outcome)
    n_pairs = len(pair_index)
    if not pairs:
        empty = pa.table({"query": pa.array([], pa.string()), "product_id": pa.array([], pa.string()),
                          "grade": pa.array([], pa.float64())})  # fmt: skip
        return Relevance(empty, {"searches": searches, "pairs_seen": 0, "pairs_kept": 0, "impressions": 0})
    pair_array = np.asarray(pairs, dtype=np.int64)
    rank_array = np.asarray(ranks, dtype=np.int64)
    click_array = np.asarray(clicked, dtype=bool)
    n_ranks = max(ranks) + 1
    # empirical Bayes: a pair seen a few times leans on how attractive the project's products are on
    # average (clicks per examination, from a first fit), not on an even chance
    first = fit_pbm(pair_array, rank_array, click_array, n_pairs=n_pairs, n_ranks=n_ranks)
    prior_mean = float(click_array.sum() / max(first.theta[rank_array].sum(), 1.0))
    prior_mean = min(max(prior_mean, 1e-3), 0.999)
    model = fit_pbm(
        pair_array,
        rank_array,
        click_array,
        n_pairs=n_pairs,
        n_ranks=n_ranks,
        prior=(prior_mean * PRIOR_STRENGTH, PRIOR_STRENGTH),
    )
    cart = np.asarray([carts[i] for i in range(n_pairs)], dtype=np.float64)
    bought = np.asarray([purchases[i] for i in range(n_pairs)], dtype=np.float64)
    clicks = model.clicks.astype(np.float64)
    # a cart or purchase without a recorded click still follows one: count it among the clicks
    basis = np.maximum(clicks, np.maximum(cart, bought))
    cart_share = np.divide(cart, basis, out=np.zeros(n_pairs), where=basis > 0)
    purchase_share = np.divide(bought, basis, out=np.zeros(n_pairs), where=basis > 0)
    utility = model.alpha * (1 + options.cart_weight * cart_share + options.purchase_weight * purchase_share)
    best = 1 + options.cart_weight + options.purchase_weight
    grade = np.clip(options.max_grade * utility / best, 0.0, options.max_grade)
    keep = model.impressions >= options.min_impressions
    names = [pair for pair, _ in sorted(pair_index.items(), key=lambda item: item[1])]
    kept = np.flatnonzero(keep)
    table = pa.table(
        {
            "query": pa.array([names[i][0] for i in kept], pa.string()),
            "product_id": pa.array([names[i][1] for i in kept], pa.string()),
            "grade": pa.array(np.round(grade[kept], 6), pa.float64()),
        }
    )
    varied = sum(1 for i in kept.tolist() if len(rank_seen[i]) > 1)
    stats = {
        "searches": searches,
        "pairs_seen": n_pairs,
        "pairs_kept": len(kept),
        "pairs_shown_at_several_ranks": varied,
        "impressions": len(pairs),
        "clicks": int(clicks.sum()),
        "carts": int(cart.sum()),
        "purchases": int(bought.sum()),
        "examination": [round(float(t), 4) for t in model.theta[:10]],
        "click_model": {
            "name": "position-based",
            "prior_mean": round(prior_mean, 4),
            "iterations": model.iterations,
            "converged": model.converged,
        },
    }
    return Relevance(table, stats)


def sequences(actions: Iterable[Action], known: set[str] | None = None) -> pa.Table:
    """(user, history, next item) rows from each shopper's carts and purchases, oldest first. An item
    carted and then bought counts once, where it was first carted; ``known``: the catalog's products
    (others are left out)."""
    by_user: dict[str, list[tuple[dt.datetime, str]]] = defaultdict(list)
    for action in actions:
        wanted = action.event_type in ("cart", "purchase") and (known is None or action.product_id in known)
        if action.user_id and wanted:
            by_user[action.user_id].append((action.occurred_at, action.product_id))
    users: list[str] = []
    histories: list[list[str]] = []
    following: list[str] = []
    for user in sorted(by_user):
        items: list[str] = []
        for _, product in sorted(by_user[user]):
            if product not in items:
                items.append(product)
        for i in range(1, len(items)):
            users.append(user)
            histories.append(items[max(0, i - MAX_HISTORY) : i])
            following.append(items[i])
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "history": pa.array(histories, pa.list_(pa.string())),
            "next_item": pa.array(following, pa.string()),
        }
    )


def merge_judgments(feedback: pa.Table, judged: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Feedback rows beside people's judgments (query, product_id, grade, split); where both grade a
    pair, the judgment wins. Returns the rows (without split) and how many came from each source."""
    seen = {
        (normalize_query(q), p)
        for q, p in zip(judged["query"].to_pylist(), judged["product_id"].to_pylist(), strict=True)
    }
    own = [
        i
        for i, (q, p) in enumerate(
            zip(feedback["query"].to_pylist(), feedback["product_id"].to_pylist(), strict=True)
        )
        if (q, p) not in seen
    ]
    people = judged.select(["query", "product_id", "grade"]).cast(feedback.schema)
    merged = pa.concat_tables([people, feedback.take(pa.array(own, pa.int64()))])
    return merged, {"judgments": people.num_rows, "feedback": len(own)}
