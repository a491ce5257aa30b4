"""The offline gate: each rule's verdict comes with the figures and a reason a person can read."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from services.api.pipelines.gate import gate_metrics, judge_offline
from services.api.pipelines.schemas import GateRule, GateSpec
from shared.models.enums import DatasetKind, ModelTaskType


def spec(*rules: dict[str, object]) -> GateSpec:
    return GateSpec(golden_dataset_version_id=uuid.uuid4(), rules=[GateRule.model_validate(r) for r in rules])


BASELINES = {"bm25": {"ndcg@10": 0.62}, "zero_shot": {"ndcg@10": 0.70}}


def test_a_drop_against_production_beyond_the_allowance_is_refused_with_the_figures() -> None:
    verdict = judge_offline(
        spec({"metric": "ndcg@10", "max_drop": 0.005}), {"ndcg@10": 0.712}, {"ndcg@10": 0.731}, BASELINES
    )
    assert not verdict.passed
    assert verdict.reason == "refused at gate: ndcg@10 0.712 < production 0.731 - 0.005 (= 0.726)"
    [check] = verdict.checks
    assert check["candidate"] == 0.712 and check["production"] == 0.731


def test_every_rule_must_pass_and_each_failure_is_named() -> None:
    verdict = judge_offline(
        spec(
            {"metric": "ndcg@10", "at_least": 0.8, "beat_baselines": True},
            {"metric": "mrr@10", "min_gain": 0.01},
        ),
        {"ndcg@10": 0.75, "mrr@10": 0.70},
        {"ndcg@10": 0.74, "mrr@10": 0.65},
        BASELINES,
    )
    assert not verdict.passed
    assert "ndcg@10 0.75 < 0.8" in verdict.reason
    assert "beats" not in verdict.reason  # passing checks are not among the reasons for refusal
    assert [c["passed"] for c in verdict.checks] == [False, True, True, True]


def test_a_candidate_that_clears_every_rule_passes_and_says_why() -> None:
    verdict = judge_offline(
        spec({"metric": "ndcg@10", "max_drop": 0.0, "beat_baselines": True}),
        {"ndcg@10": 0.74},
        {"ndcg@10": 0.73},
        BASELINES,
    )
    assert verdict.passed
    assert verdict.reason.startswith("passed the gate: ndcg@10 0.74 >= production 0.73 - 0")
    assert "beats zero_shot 0.7" in verdict.reason


def test_without_production_a_relative_rule_passes_and_says_there_was_none() -> None:
    verdict = judge_offline(spec({"metric": "ndcg@10", "max_drop": 0.01}), {"ndcg@10": 0.5}, None, {})
    assert verdict.passed and "no production version" in verdict.reason


def test_for_rmse_lower_is_better() -> None:
    refused = judge_offline(spec({"metric": "rmse", "max_drop": 0.01}), {"rmse": 0.9}, {"rmse": 0.8}, {})
    assert not refused.passed and "rmse 0.9 > production 0.8 + 0.01" in refused.reason
    passed = judge_offline(
        spec({"metric": "rmse", "beat_baselines": True}), {"rmse": 0.7}, None, {"bm25": {"rmse": 0.8}}
    )
    assert passed.passed


def test_a_metric_the_evaluation_did_not_give_refuses() -> None:
    verdict = judge_offline(spec({"metric": "catalog_ndcg@10", "at_least": 0.1}), {"ndcg@10": 0.9}, None, {})
    assert not verdict.passed and "catalog_ndcg@10 was not measured" in verdict.reason


def test_a_rule_that_checks_nothing_is_refused() -> None:
    with pytest.raises(ValidationError, match="checks nothing"):
        GateRule(metric="ndcg@10")


def test_the_metrics_each_kind_of_golden_set_gives() -> None:
    assert "catalog_ndcg@10" in gate_metrics(ModelTaskType.bi_encoder, DatasetKind.relevance)
    assert "catalog_ndcg@10" not in gate_metrics(ModelTaskType.cross_encoder, DatasetKind.relevance)
    assert "rmse" in gate_metrics(ModelTaskType.cross_encoder, DatasetKind.relevance)
    assert "recall@100" in gate_metrics(ModelTaskType.bi_encoder, DatasetKind.sequences)
    assert gate_metrics(ModelTaskType.classifier, DatasetKind.labeled_text) == {"accuracy", "macro_f1"}
