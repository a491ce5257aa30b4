"""The online judge: the canary's arm against the primary's on shoppers' behaviour.

At look j (0-based) each arm has at least ``min_requests * 2**j`` requests; each look tests at
``alpha / max_looks`` (Bonferroni over the planned looks), so looking early never raises the chance of
promoting a candidate that is no better above ``alpha`` (nor that of rolling back one no worse). A look
where the candidate is better at that level promotes; one where it is worse rolls back; after the last
look, or past ``max_duration_s``, the canary is inconclusive.
Rates per request (CTR@k, carts, purchases) are compared with the conditional binomial test of two
Poisson rates (given the arms' total count, the canary's share of it against its share of the requests;
scipy's binomtest), the share of requests with a click with Fisher's exact test. Guardrails (the
latency p99 ratio) roll back at once, whatever the metric says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats

from services.api.pipelines.schemas import JudgeMetric, RolloutSpec

Decision = Literal["wait", "promote", "rollback"]


@dataclass(frozen=True)
class Arm:
    """One version's online figures since the canary started."""

    requests: int
    clicks_at_k: int  # clicks on the top k
    clicked_requests: int  # requests with at least one click
    carts: int
    purchases: int
    latency_p99_ms: float

    def count(self, metric: JudgeMetric) -> int:
        return {
            JudgeMetric.ctr_at_k: self.clicks_at_k,
            JudgeMetric.click_rate: self.clicked_requests,
            JudgeMetric.cart_rate: self.carts,
            JudgeMetric.purchase_rate: self.purchases,
        }[metric]


@dataclass(frozen=True)
class Look:
    decision: Decision
    reason: str
    figures: dict[str, Any]


def _test(metric: JudgeMetric, candidate: Arm, primary: Arm, alternative: str) -> tuple[float, float]:
    """(statistic, p) of the one-sided test that the candidate's rate is ``alternative`` than the
    primary's."""
    c, p = candidate.count(metric), primary.count(metric)
    if metric == JudgeMetric.click_rate:
        table = [[c, candidate.requests - c], [p, primary.requests - p]]
        odds, pvalue = stats.fisher_exact(table, alternative=alternative)
        return float(odds), float(pvalue)
    if c + p == 0:
        return 0.0, 1.0
    share = candidate.requests / (candidate.requests + primary.requests)
    found = stats.binomtest(c, c + p, share, alternative=alternative)
    return float(found.statistic), float(found.pvalue)


def look(spec: RolloutSpec, candidate: Arm, primary: Arm, looks_done: int, elapsed_s: float) -> Look:
    """What the judge decides now, given the looks already taken."""
    metric = spec.metric
    name = f"CTR@{spec.k}" if metric == JudgeMetric.ctr_at_k else metric.value
    rate_c = candidate.count(metric) / candidate.requests if candidate.requests else 0.0
    rate_p = primary.count(metric) / primary.requests if primary.requests else 0.0
    figures: dict[str, Any] = {
        "metric": metric.value,
        "k": spec.k,
        "candidate": {"requests": candidate.requests, "count": candidate.count(metric), "rate": rate_c,
                      "latency_p99_ms": candidate.latency_p99_ms},
        "primary": {"requests": primary.requests, "count": primary.count(metric), "rate": rate_p,
                    "latency_p99_ms": primary.latency_p99_ms},
        "elapsed_s": round(elapsed_s, 1),
    }  # fmt: skip
    fewest = min(candidate.requests, primary.requests)
    ratio = spec.max_latency_p99_ratio
    if ratio is not None and fewest >= spec.guardrail_min_requests and primary.latency_p99_ms > 0:
        seen = candidate.latency_p99_ms / primary.latency_p99_ms
        figures["latency_p99_ratio"] = round(seen, 3)
        if seen > ratio and candidate.latency_p99_ms - primary.latency_p99_ms > spec.latency_p99_slack_ms:
            return Look(
                "rollback",
                f"guardrail broken: the canary's latency p99 {candidate.latency_p99_ms:.1f} ms is "
                f"{seen:.2f}x the primary's {primary.latency_p99_ms:.1f} ms (most {ratio:g}x)",
                figures,
            )
    broken = _starved(spec, candidate, primary, figures)
    if broken is not None:
        return Look("rollback", broken, figures)
    due = spec.min_requests * 2**looks_done
    timed_out = elapsed_s >= spec.max_duration_s
    if looks_done >= spec.max_looks or (fewest < due and not timed_out):
        if timed_out or looks_done >= spec.max_looks:
            return _inconclusive(spec, name, figures, rate_c, rate_p)
        figures["next_look_at_requests"] = due
        return Look("wait", f"waiting for {due} requests per arm (fewest so far {fewest})", figures)
    if fewest < spec.min_requests:  # out of time before the first look
        return _inconclusive(spec, name, figures, rate_c, rate_p)
    level = spec.alpha / spec.max_looks
    statistic, p_better = _test(metric, candidate, primary, "greater")
    _, p_worse = _test(metric, candidate, primary, "less")
    figures.update(look=looks_done + 1, level=level, statistic=statistic, p_better=p_better, p_worse=p_worse)
    said = (
        f"{name} {rate_c:.4f} (canary, {candidate.requests} requests) "
        f"vs {rate_p:.4f} (primary, {primary.requests})"
    )
    if p_better < level:
        return Look("promote", f"{said}: better, p={p_better:.2g} < {level:.3g}", figures)
    if p_worse < level:
        return Look("rollback", f"{said}: worse, p={p_worse:.2g} < {level:.3g}", figures)
    if looks_done + 1 >= spec.max_looks or timed_out:
        return _inconclusive(spec, name, figures, rate_c, rate_p, said)
    figures["next_look_at_requests"] = spec.min_requests * 2 ** (looks_done + 1)
    return Look("wait", f"{said}: no difference at {level:.3g} yet (p={p_better:.2g})", figures)


def _starved(spec: RolloutSpec, candidate: Arm, primary: Arm, figures: dict[str, Any]) -> str | None:
    """Why the canary answers clearly less than its share of the requests (it fails them, or cannot
    load and the primary takes them), or None: the error-rate guardrail, read from the impressions."""
    expected = spec.canary_percent / 100
    total = candidate.requests + primary.requests
    floor = spec.min_served_share
    if floor is None or expected <= 0 or total * expected < spec.guardrail_min_requests:
        return None
    served = candidate.requests / total / expected
    figures["served_share"] = round(served, 3)
    if served >= floor:
        return None
    p = float(stats.binomtest(candidate.requests, total, expected * floor, alternative="less").pvalue)
    figures["p_served"] = p
    if p >= spec.alpha:
        return None
    return (
        f"guardrail broken: the canary answered {candidate.requests} of {total} requests, "
        f"{served:.0%} of its {spec.canary_percent}% share (at least {floor:.0%}): it fails or cannot load, "
        f"p={p:.2g}"
    )


def _inconclusive(
    spec: RolloutSpec, name: str, figures: dict[str, Any], rate_c: float, rate_p: float, said: str = ""
) -> Look:
    said = said or f"{name} {rate_c:.4f} (canary) vs {rate_p:.4f} (primary)"
    action = "promoted" if spec.on_inconclusive == "promote" else "rolled back"
    figures["inconclusive"] = True
    return Look(
        "promote" if spec.on_inconclusive == "promote" else "rollback",
        f"inconclusive after {figures['elapsed_s']:.0f} s: {said}; {action} as configured",
        figures,
    )
