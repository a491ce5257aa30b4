"""Pipelines and their runs, as the API reads and writes them. The specs are stored as JSON on the
pipeline row; these models are their one definition."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.models.enums import (
    DeploymentRole,
    JobType,
    PipelineStatus,
    ProjectRole,
    RunStatus,
    RunStep,
    TriggerKind,
)
from shared.training import Hyperparameters, hyperparameter_problem

Strict = ConfigDict(extra="forbid")


class CtrDrop(BaseModel):
    """Fire when the production version's CTR@k over the last ``window_hours`` is ``percent`` lower
    than over its first ``baseline_days`` in production."""

    model_config = Strict
    percent: float = Field(gt=0, lt=100, description="The drop, in percent of the first days' CTR@k.")
    baseline_days: float = Field(3, gt=0, le=90, description="Its first days in production, the reference.")
    window_hours: float = Field(24, gt=0, le=24 * 31, description="The recent window compared with them.")
    k: int = Field(10, ge=1, le=100)
    min_requests: int = Field(1000, ge=1, description="Requests each window needs before it is compared.")


class Triggers(BaseModel):
    """When a run starts on its own (each is optional; none: only manual runs)."""

    model_config = Strict
    cron: str | None = Field(
        None, max_length=100, description="A cron schedule (UTC), e.g. `0 3 * * *`; missed ticks fire once."
    )
    dataset: str | None = Field(
        None, max_length=200, description="The name of a dataset: each new version of it starts a run."
    )
    min_new_events: int | None = Field(
        None, ge=1, le=10**9, description="Clicks, carts and purchases since the last run's start."
    )
    ctr_drop: CtrDrop | None = None


class FeedbackSpec(BaseModel):
    """Collect: a feedback job over the last ``days`` of impressions and events (see feedback jobs)."""

    model_config = Strict
    days: float = Field(7, gt=0, le=366, description="The window, ending when the run starts.")
    name: str = Field("feedback", min_length=1, max_length=200, description="The dataset it writes.")
    min_impressions: int = Field(10, ge=1, le=100_000)
    merge_base: bool = Field(
        False,
        description="Merge people's judgments (the training data's dataset_version_id or dataset) in; "
        "they win where both grade a pair.",
    )


class TrainingSpec(BaseModel):
    model_config = Strict
    job_type: Literal[JobType.bi_encoder, JobType.cross_encoder, JobType.classifier]
    dataset_version_id: uuid.UUID | None = Field(None, description="A fixed dataset version to train on.")
    dataset: str | None = Field(
        None, max_length=200, description="A dataset's name: its latest version when the run starts."
    )
    feedback: FeedbackSpec | None = Field(None, description="Train on shoppers' feedback (and the base).")
    base_model: str | None = Field(None, max_length=500)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    compute_limit_hours: float = Field(1.0, gt=0, le=10_000)

    @model_validator(mode="after")
    def _one_source(self) -> TrainingSpec:
        if self.dataset_version_id is not None and self.dataset is not None:
            raise ValueError("name dataset_version_id or dataset, not both")
        if self.feedback is None and self.dataset_version_id is None and self.dataset is None:
            raise ValueError("training needs data: dataset_version_id, dataset (its latest) or feedback")
        merge = self.feedback is not None and self.feedback.merge_base
        if merge and self.dataset_version_id is None and self.dataset is None:
            raise ValueError("feedback.merge_base needs dataset_version_id or dataset to merge")
        unfit = hyperparameter_problem(self.job_type, self.hyperparameters)
        if unfit is not None:
            raise ValueError(unfit)
        return self


class GateRule(BaseModel):
    """One metric of the candidate on the golden set: any of an absolute floor (or ceiling), a largest
    drop or a smallest gain against production, and beating every baseline. For a metric where lower is
    better (rmse) a drop is a rise."""

    model_config = Strict
    metric: str = Field(min_length=1, max_length=64, description="e.g. ndcg@10, catalog_ndcg@10, accuracy.")
    at_least: float | None = None
    at_most: float | None = None
    max_drop: float | None = Field(None, ge=0, description="Against production: at most this much worse.")
    min_gain: float | None = Field(None, description="Against production: at least this much better.")
    beat_baselines: bool = Field(False, description="Better than each baseline (BM25, zero-shot, ...).")

    @model_validator(mode="after")
    def _something(self) -> GateRule:
        if (
            self.at_least is None
            and self.at_most is None
            and self.max_drop is None
            and self.min_gain is None
            and not self.beat_baselines
        ):
            raise ValueError(
                f"the rule on {self.metric} checks nothing: give at_least, at_most, max_drop, min_gain "
                "or beat_baselines"
            )
        return self


class GateSpec(BaseModel):
    model_config = Strict
    golden_dataset_version_id: uuid.UUID = Field(
        description="A frozen dataset version training never sees; both versions are scored on its "
        "validation split."
    )
    rules: list[GateRule] = Field(min_length=1, max_length=20)


class JudgeMetric(StrEnum):
    ctr_at_k = "ctr_at_k"  # clicks on the top k per request (Poisson means test)
    click_rate = "click_rate"  # share of requests with a click (Fisher's exact test)
    cart_rate = "cart_rate"  # carts per request
    purchase_rate = "purchase_rate"  # purchases per request


class RolloutSpec(BaseModel):
    """The canary and its judge. canary_percent 0: a candidate that passed is promoted at once."""

    model_config = Strict
    canary_percent: int = Field(10, ge=0, le=99)
    metric: JudgeMetric = JudgeMetric.ctr_at_k
    k: int = Field(10, ge=1, le=100)
    alpha: float = Field(0.05, gt=0, lt=0.5, description="The test's level, shared by all looks.")
    min_requests: int = Field(
        1000, ge=1, description="Requests each arm needs before the first look (no verdict on less)."
    )
    max_looks: int = Field(
        3,
        ge=1,
        le=20,
        description="Looks at 1, 2, 4, ... times min_requests per arm, each at alpha / max_looks, so "
        "looking early keeps the false-decision rate within alpha.",
    )
    max_duration_s: float = Field(86_400, gt=0, le=90 * 86_400)
    on_inconclusive: Literal["rollback", "promote"] = "rollback"
    max_latency_p99_ratio: float | None = Field(
        2.0, gt=1, description="Canary p99 over primary p99 above this rolls back at once."
    )
    latency_p99_slack_ms: float = Field(
        10.0,
        ge=0,
        le=60_000,
        description="The latency guardrail trips only when the canary's p99 is also this many ms over the "
        "primary's: at a few milliseconds, p99s differ by scheduling noise, and a ratio of them says little.",
    )
    min_served_share: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="The canary must answer at least this part of its share of the requests: the ones it "
        "fails (or cannot load for) go unanswered or to the primary. Clearly below it, it is rolled back at "
        "once (its error rate, as the impressions show it).",
    )
    guardrail_min_requests: int = Field(100, ge=1, description="Requests per arm before guardrails apply.")


class PipelineBase(BaseModel):
    model_config = Strict
    description: str = Field("", max_length=5000)
    triggers: Triggers = Field(default_factory=Triggers)
    gate: GateSpec | None = Field(None, description="No gate: every candidate goes on to approval/canary.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    require_approval: bool = False
    approver_role: Literal[ProjectRole.owner, ProjectRole.maintainer, ProjectRole.member] = (
        ProjectRole.maintainer
    )
    milestone_id: uuid.UUID | None = None


class PipelineCreate(PipelineBase):
    name: str = Field(min_length=1, max_length=100)
    role: DeploymentRole
    training: TrainingSpec

    @field_validator("name")
    @classmethod
    def _stripped(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name is empty")
        return value.strip()


class PipelineUpdate(BaseModel):
    """Only the fields given change; a spec given is replaced whole."""

    model_config = Strict
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=5000)
    triggers: Triggers | None = None
    training: TrainingSpec | None = None
    gate: GateSpec | None = None
    rollout: RolloutSpec | None = None
    require_approval: bool | None = None
    approver_role: Literal[ProjectRole.owner, ProjectRole.maintainer, ProjectRole.member] | None = None
    milestone_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = Field(None, description="A member the loop acts for (maintainer or owner).")


class PipelineRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str
    role: DeploymentRole
    status: PipelineStatus
    triggers: Triggers
    training: TrainingSpec
    gate: GateSpec | None
    rollout: RolloutSpec
    require_approval: bool
    approver_role: ProjectRole
    owner_id: uuid.UUID
    milestone_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    next_cron_tick: dt.datetime | None = Field(None, description="When the cron trigger fires next.")

    @field_validator("gate", mode="before")
    @classmethod
    def _no_gate(cls, value: Any) -> Any:
        return value or None


class RunCreate(BaseModel):
    model_config = Strict
    note: str = Field("", max_length=1000, description="Why (kept on the run).")


class RunDecision(BaseModel):
    model_config = Strict
    reason: str = Field("", max_length=2000)


class RunStepRead(BaseModel):
    name: RunStep
    status: Literal["running", "waiting", "succeeded", "failed", "skipped"]
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    detail: str | None = None


class RunRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    pipeline_id: uuid.UUID
    project_id: uuid.UUID
    number: int
    trigger: TriggerKind
    status: RunStatus
    step: RunStep | None
    steps: list[RunStepRead]
    links: dict[str, Any] = Field(
        description="What the run made or used: feedback_job_id, dataset_version_id, training_job_id, "
        "candidate_version_id, production_version_id, gate_job_ids, deployment_ids, task_ids."
    )
    gate: dict[str, Any] | None = Field(description="Each rule's figures and verdict.")
    judge: dict[str, Any] | None = Field(description="Each look: requests, counts, rates, statistic, p.")
    outcome: str | None = Field(description="Why the run ended as it did, in words.")
    canary_started_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    decided_by: uuid.UUID | None
