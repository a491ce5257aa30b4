"""The offline gate: a candidate's metrics on the golden set against rules, production and baselines.

Pure functions: the controller feeds them the evaluate jobs' results and stores what they return on
the run, so every verdict can be read back with its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.api.pipelines.schemas import GateRule, GateSpec
from shared.models.enums import DatasetKind, ModelTaskType

LOWER_IS_BETTER = frozenset({"rmse"})
_RANKING = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
_CATALOG = tuple(f"catalog_{name}" for name in _RANKING)


def gate_metrics(task: ModelTaskType, kind: DatasetKind) -> frozenset[str]:
    """The metrics an evaluate job reports for a model of this task on data of this kind."""
    if task == ModelTaskType.classifier:
        return frozenset({"accuracy", "macro_f1"})
    if kind == DatasetKind.sequences:
        return frozenset(_RANKING)
    if task == ModelTaskType.cross_encoder:
        return frozenset({*_RANKING, "rmse"})
    return frozenset({*_RANKING, *_CATALOG})


@dataclass
class Verdict:
    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        failed = [check["reason"] for check in self.checks if not check["passed"]]
        if not failed:
            return "passed the gate: " + "; ".join(check["reason"] for check in self.checks)
        return "refused at gate: " + "; ".join(failed)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.checks, "reason": self.reason}


def _fmt(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _check(rule: GateRule, candidate: dict[str, Any], production: dict[str, Any] | None,
           baselines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    name = rule.metric
    value = candidate.get(name)
    if not isinstance(value, int | float):
        return [{"metric": name, "passed": False, "reason": f"{name} was not measured on the golden set"}]
    value = float(value)
    found: list[dict[str, Any]] = []

    def add(kind: str, passed: bool, reason: str, **figures: float) -> None:
        found.append({"metric": name, "check": kind, "passed": passed, "reason": reason,
                      "candidate": value, **figures})  # fmt: skip

    if rule.at_least is not None:
        ok = value >= rule.at_least
        add("at_least", ok, f"{name} {_fmt(value)} {'>=' if ok else '<'} {_fmt(rule.at_least)}",
            threshold=rule.at_least)  # fmt: skip
    if rule.at_most is not None:
        ok = value <= rule.at_most
        add("at_most", ok, f"{name} {_fmt(value)} {'<=' if ok else '>'} {_fmt(rule.at_most)}",
            threshold=rule.at_most)  # fmt: skip
    lower = name in LOWER_IS_BETTER
    reference = production.get(name) if production else None
    if rule.max_drop is not None or rule.min_gain is not None:
        if not isinstance(reference, int | float):
            add("production", True, f"{name}: no production version to compare with")
        else:
            ref = float(reference)
            gain = (ref - value) if lower else (value - ref)
            sign = "-" if not lower else "+"
            if rule.max_drop is not None:
                ok = gain >= -rule.max_drop - 1e-12
                bound = ref + rule.max_drop if lower else ref - rule.max_drop
                op = ("<=" if ok else ">") if lower else (">=" if ok else "<")
                add("max_drop", ok,
                    f"{name} {_fmt(value)} {op} production {_fmt(ref)} {sign} {_fmt(rule.max_drop)}"
                    f" (= {_fmt(bound)})", production=ref, max_drop=rule.max_drop)  # fmt: skip
            if rule.min_gain is not None:
                ok = gain >= rule.min_gain - 1e-12
                other = "-" if lower else "+"
                bound = ref - rule.min_gain if lower else ref + rule.min_gain
                op = ("<=" if ok else ">") if lower else (">=" if ok else "<")
                add("min_gain", ok,
                    f"{name} {_fmt(value)} {op} production {_fmt(ref)} {other} {_fmt(rule.min_gain)}"
                    f" (= {_fmt(bound)})", production=ref, min_gain=rule.min_gain)  # fmt: skip
    if rule.beat_baselines:
        for baseline, figures in sorted(baselines.items()):
            theirs = figures.get(name)
            if not isinstance(theirs, int | float):
                continue
            ok = _better(name, value, float(theirs))
            word = "beats" if ok else "does not beat"
            add("baseline", ok, f"{name} {_fmt(value)} {word} {baseline} {_fmt(float(theirs))}",
                baseline=float(theirs))  # fmt: skip
    return found


def judge_offline(
    spec: GateSpec,
    candidate: dict[str, Any],
    production: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]],
) -> Verdict:
    """Every rule's checks; the candidate passes when all of them pass."""
    checks = [check for rule in spec.rules for check in _check(rule, candidate, production, baselines)]
    return Verdict(passed=all(check["passed"] for check in checks), checks=checks)
