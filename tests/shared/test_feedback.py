"""Feedback rows from served lists and shoppers' actions: graded pairs, sequences, merging with judgments."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest
from pydantic import ValidationError

from shared.feedback import (
    Action,
    FeedbackOptions,
    Served,
    merge_judgments,
    normalize_query,
    relevance,
    sequences,
)

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _options(**overrides: object) -> FeedbackOptions:
    return FeedbackOptions(start=T0, end=T0 + dt.timedelta(days=1), **overrides)  # type: ignore[arg-type]


def _logs(
    searches: int, appeal: dict[str, float], cart: dict[str, float], seed: int = 3
) -> tuple[list[Served], list[Action]]:
    """One query; its products shown in a random order each time; rank k examined with 1/(k+1)."""
    rng = random.Random(seed)
    served, actions = [], []
    products = sorted(appeal)
    for n in range(searches):
        order = products[:]
        rng.shuffle(order)
        request = f"r{n}"
        served.append(Served(request, "Cordless  Drill", f"u{n % 7}", order))
        for rank, product in enumerate(order):
            if rng.random() < 1 / (rank + 1) and rng.random() < appeal[product]:
                actions.append(Action(request, product, "click", f"u{n % 7}", T0))
                if rng.random() < cart.get(product, 0.0):
                    actions.append(Action(request, product, "cart", f"u{n % 7}", T0))
    return served, actions


def test_grades_follow_appeal_whatever_the_position_and_carts_weigh_more() -> None:
    appeal = {"a": 0.8, "b": 0.4, "c": 0.4, "d": 0.05}
    served, actions = _logs(4000, appeal, cart={"b": 0.9})
    graded = relevance(served, actions, _options())
    grades = dict(zip(graded.table["product_id"].to_pylist(), graded.table["grade"].to_pylist(), strict=True))
    assert set(graded.table["query"].to_pylist()) == {"cordless drill"}  # case and spacing folded
    assert grades["a"] > grades["c"] > grades["d"]
    assert grades["b"] > 1.5 * grades["c"]  # as appealing as c, and carted
    assert all(0 <= g <= 3 for g in grades.values())
    assert graded.stats["searches"] == 4000 and graded.stats["pairs_kept"] == 4
    assert graded.stats["pairs_shown_at_several_ranks"] == 4
    # examination recovered from the shuffled orders: rank 2 (index 1) about half of rank 1
    assert graded.stats["examination"][1] == pytest.approx(0.5, abs=0.08)


def test_pairs_seen_too_rarely_are_left_out() -> None:
    served, actions = _logs(30, {"a": 0.5, "b": 0.5}, cart={})
    served.append(Served("rare", "saw", None, ["z"]))
    graded = relevance(served, actions, _options(min_impressions=10))
    assert ("saw", "z") not in set(
        zip(graded.table["query"].to_pylist(), graded.table["product_id"].to_pylist(), strict=True)
    )
    assert graded.stats["pairs_seen"] == 3 and graded.stats["pairs_kept"] == 2


def test_actions_for_unknown_requests_and_recommendations_without_query_grade_nothing() -> None:
    served = [Served("r1", None, "u1", ["a", "b"]), Served("r2", "   ", "u1", ["a"])]
    actions = [Action("elsewhere", "a", "click", "u1", T0)]
    graded = relevance(served, actions, _options(min_impressions=1))
    assert graded.table.num_rows == 0 and graded.stats["searches"] == 0


def test_sequences_follow_each_shoppers_carts_and_purchases_in_time_order() -> None:
    at = [T0 + dt.timedelta(minutes=m) for m in range(6)]
    actions = [
        Action("r1", "p1", "cart", "u1", at[0]),
        Action("r1", "p1", "purchase", "u1", at[1]),  # the same item again: counted once
        Action("r2", "p9", "click", "u1", at[2]),  # a click is no step of a sequence
        Action("r3", "p2", "cart", "u1", at[3]),
        Action(None, "p3", "purchase", "u1", at[4]),
        Action(None, "gone", "purchase", "u1", at[5]),  # not in the catalog
        Action("r4", "p5", "cart", "u2", at[0]),  # one item: no next item
    ]
    table = sequences(actions, known={"p1", "p2", "p3", "p5", "p9"})
    assert table.to_pylist() == [
        {"user_id": "u1", "history": ["p1"], "next_item": "p2"},
        {"user_id": "u1", "history": ["p1", "p2"], "next_item": "p3"},
    ]


def test_judgments_win_where_both_grade_a_pair() -> None:
    feedback = pa.table({"query": ["drill", "drill"], "product_id": ["a", "b"], "grade": [0.4, 2.0]})
    judged = pa.table({"query": ["Drill"], "product_id": ["a"], "grade": [3.0], "split": ["train"]})
    merged, sources = merge_judgments(feedback, judged)
    assert sorted(merged.to_pylist(), key=lambda r: r["product_id"]) == [
        {"query": "Drill", "product_id": "a", "grade": 3.0},
        {"query": "drill", "product_id": "b", "grade": 2.0},
    ]
    assert sources == {"judgments": 1, "feedback": 1}
    assert normalize_query("  Cordless\tDRILL ") == "cordless drill"


def test_options_refuse_an_empty_window_and_unknown_names() -> None:
    with pytest.raises(ValidationError, match="start must be before"):
        FeedbackOptions(start=T0, end=T0)
    with pytest.raises(ValidationError, match="extra"):
        FeedbackOptions.model_validate({"start": T0, "end": T0 + dt.timedelta(1), "min_impresions": 3})
