"""The canary's judge: it waits for traffic, decides on scipy's tests at alpha shared across its looks,
and its guardrail rolls back at once."""

from __future__ import annotations

import numpy as np

from services.api.pipelines.judge import Arm, look
from services.api.pipelines.schemas import JudgeMetric, RolloutSpec


def arm(requests: int, clicks: int, latency: float = 20.0) -> Arm:
    clicked = min(clicks, requests)
    return Arm(requests, clicks, clicked, 0, 0, latency)


def test_no_verdict_before_each_arm_has_the_minimum() -> None:
    spec = RolloutSpec(min_requests=1000)
    decided = look(spec, arm(5000, 4000), arm(999, 100), looks_done=0, elapsed_s=60)
    assert decided.decision == "wait" and "1000 requests per arm" in decided.reason


def test_a_clearly_better_canary_is_promoted_with_its_numbers() -> None:
    spec = RolloutSpec(min_requests=1000, alpha=0.05, max_looks=3)
    decided = look(spec, arm(1200, 700), arm(1200, 500), looks_done=0, elapsed_s=600)
    assert decided.decision == "promote"
    assert decided.figures["p_better"] < 0.05 / 3 and decided.figures["level"] == 0.05 / 3
    assert decided.figures["candidate"]["count"] == 700 and decided.figures["primary"]["requests"] == 1200
    assert decided.reason.startswith(
        "CTR@10 0.5833 (canary, 1200 requests) vs 0.4167 (primary, 1200): better"
    )


def test_a_clearly_worse_canary_is_rolled_back() -> None:
    spec = RolloutSpec(min_requests=1000, metric=JudgeMetric.click_rate)
    decided = look(spec, arm(1500, 400), arm(1500, 600), looks_done=0, elapsed_s=600)
    assert decided.decision == "rollback" and "worse" in decided.reason


def test_no_difference_waits_for_the_next_look_then_ends_as_configured() -> None:
    spec = RolloutSpec(min_requests=1000, max_looks=2, on_inconclusive="promote")
    first = look(spec, arm(1000, 500), arm(1000, 500), looks_done=0, elapsed_s=60)
    assert first.decision == "wait" and first.figures["next_look_at_requests"] == 2000
    early = look(spec, arm(1500, 750), arm(1500, 750), looks_done=1, elapsed_s=90)
    assert early.decision == "wait"
    last = look(spec, arm(2000, 1000), arm(2000, 1000), looks_done=1, elapsed_s=120)
    assert last.decision == "promote" and last.figures["inconclusive"] and "inconclusive" in last.reason


def test_past_the_longest_duration_an_undecided_canary_is_rolled_back() -> None:
    spec = RolloutSpec(min_requests=1000, max_duration_s=3600)
    decided = look(spec, arm(300, 150), arm(300, 140), looks_done=0, elapsed_s=3601)
    assert decided.decision == "rollback" and decided.reason.startswith("inconclusive after 3601 s")


def test_a_slow_canary_is_rolled_back_at_once_whatever_its_clicks() -> None:
    spec = RolloutSpec(min_requests=1000, max_latency_p99_ratio=1.5, guardrail_min_requests=100)
    decided = look(spec, arm(150, 150, latency=40.0), arm(150, 10, latency=20.0), looks_done=0, elapsed_s=30)
    assert decided.decision == "rollback" and decided.reason.startswith("guardrail broken")
    assert decided.figures["latency_p99_ratio"] == 2.0
    # the same ratio a few milliseconds apart is scheduling noise: no guardrail
    quick = look(spec, arm(150, 150, latency=8.0), arm(150, 10, latency=4.0), looks_done=0, elapsed_s=30)
    assert not quick.reason.startswith("guardrail broken")
    assert quick.figures["latency_p99_ratio"] == 2.0


def test_looking_early_keeps_false_promotions_within_alpha() -> None:
    """A/A canaries (the same click rate in both arms), judged through all their looks: the share that
    a look promotes, though the candidate is no better, stays within alpha (so does the share rolled
    back though it is no worse; a rollback of an equal candidate costs nothing)."""
    spec = RolloutSpec(min_requests=500, max_looks=3, alpha=0.05, metric=JudgeMetric.click_rate)
    rng = np.random.default_rng(11)
    promoted = rolled_back = 0
    trials = 300
    for _ in range(trials):
        clicks = rng.random((2, 500 * 2**2)) < 0.3
        for done in range(spec.max_looks):
            n = 500 * 2**done
            decided = look(
                spec, arm(n, int(clicks[0, :n].sum())), arm(n, int(clicks[1, :n].sum())), done, elapsed_s=1
            )
            if decided.decision != "wait":
                if not decided.figures.get("inconclusive"):
                    promoted += decided.decision == "promote"
                    rolled_back += decided.decision == "rollback"
                break
    # alpha, and about two standard errors of 300 trials
    assert promoted / trials <= 0.05 + 0.025 and rolled_back / trials <= 0.05 + 0.025


def test_a_canary_that_answers_too_little_of_its_share_is_rolled_back_at_once() -> None:
    """Requests the canary fails (or that the primary takes while it cannot load) leave no impression in
    its arm: far below its share of the requests, it is rolled back whatever its clicks say."""
    spec = RolloutSpec(canary_percent=50, min_requests=1000, guardrail_min_requests=100)
    starved = look(spec, arm(40, 40), arm(400, 10), looks_done=0, elapsed_s=60)
    assert starved.decision == "rollback" and starved.reason.startswith(
        "guardrail broken: the canary answered 40"
    )
    assert starved.figures["served_share"] == round(40 / 440 / 0.5, 3) and starved.figures["p_served"] < 0.05
    # a share a little off, as hashing users gives: no alarm
    fine = look(spec, arm(190, 80), arm(230, 90), looks_done=0, elapsed_s=60)
    assert fine.decision == "wait" and fine.figures["served_share"] > 0.5
    # too few requests to tell: no alarm either
    early = look(spec, arm(2, 1), arm(60, 10), looks_done=0, elapsed_s=5)
    assert early.decision == "wait" and "served_share" not in early.figures
