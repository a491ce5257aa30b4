from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.labeling import MAX_BUDGET
from shared.models.enums import (
    AssignmentPolicy,
    AssignmentStatus,
    LabelingPool,
    LabelingStatus,
    LabelingStrategy,
)

MAX_LABELLERS = 50


class QueueCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=200)
    strategy: LabelingStrategy = Field(
        LabelingStrategy.committee,
        description="random (the control); uncertainty: the reranker's least sure pairs (needs a "
        "cross-encoder); committee: the pairs BM25, the retriever, the reranker and, for searches, the "
        "click model disagree most about (top-k membership).",
    )
    budget: int = Field(ge=1, le=MAX_BUDGET, description="How many (query, product) pairs to judge.")
    pool: LabelingPool = Field(
        LabelingPool.dataset,
        description="dataset: a relevance dataset version's queries; impressions: what shoppers searched "
        "for in a window.",
    )
    dataset_version_id: uuid.UUID | None = Field(None, description="pool=dataset: the version.")
    split: Literal["train", "valid", "test", "all"] = Field(
        "train", description="pool=dataset: whose queries (keep validation queries unseen by default)."
    )
    from_: AwareDatetime | None = Field(
        None, alias="from", description="pool=impressions (default: 7 days ago)."
    )
    to: AwareDatetime | None = Field(None, description="pool=impressions (default: now).")
    max_queries: int = Field(
        1000, ge=1, le=MAX_BUDGET, description="At most this many of the pool's queries."
    )
    candidates_per_query: int = Field(
        20, ge=2, le=200, description="How deep BM25 and the retriever each look into the catalog per query."
    )
    k: int = Field(10, ge=1, le=100, description="committee: the top-k whose membership the rankers vote on.")
    per_query: int | None = Field(
        None, ge=1, le=200, description="At most this many pairs of one query (default: spread the budget)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    labellers: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_LABELLERS,
        description="Project members (not viewers) who label; default: you.",
    )
    labels_per_item: int = Field(
        1, ge=1, le=5, description="Labellers per pair: 2 or more measures their agreement."
    )
    assignment: AssignmentPolicy = AssignmentPolicy.round_robin
    min_grade: int = Field(0, ge=0, le=100, description="The grade scale's bottom (irrelevant).")
    max_grade: int = Field(3, ge=1, le=100, description="The grade scale's top (an exact match).")
    dataset_name: str = Field(
        "labels",
        min_length=1,
        max_length=200,
        description="The relevance dataset closing writes a version of.",
    )
    base_dataset_version_id: uuid.UUID | None = Field(
        None,
        description="Relevance judgments the labels join when the queue closes (their pairs are not asked).",
    )
    retriever_version_id: uuid.UUID | None = Field(
        None, description="A bi-encoder version to find candidates with (default: the deployed retriever)."
    )
    reranker_version_id: uuid.UUID | None = Field(
        None, description="A cross-encoder version to score them with (default: the deployed reranker)."
    )
    priority: int = Field(5, ge=0, le=9, description="The selection job's queue priority.")
    compute_limit_hours: float = Field(1.0, gt=0, le=1000)

    @model_validator(mode="after")
    def _scale(self) -> QueueCreate:
        if self.max_grade <= self.min_grade:
            raise ValueError("max_grade must be above min_grade")
        return self


class LabellerProgress(BaseModel):
    user_id: uuid.UUID
    name: str | None
    assigned: int
    labelled: int
    skipped: int
    pending: int


class QueueProgress(BaseModel):
    items: int
    labels_needed: int
    labelled: int
    skipped: int
    pending: int
    by_labeller: list[LabellerProgress]


class QueueRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    status: LabelingStatus
    strategy: LabelingStrategy
    pool: LabelingPool
    options: dict[str, Any] = Field(description="What the selection job was asked.")
    budget: int
    labels_per_item: int
    assignment: AssignmentPolicy
    labellers: list[uuid.UUID]
    min_grade: int
    max_grade: int
    dataset_name: str
    pool_dataset_version_id: uuid.UUID | None
    selection_job_id: uuid.UUID | None
    report: dict[str, Any] = Field(
        description="selection: what the job found (pool, candidates, rankers); agreement: at close."
    )
    error: str | None
    dataset_version_id: uuid.UUID | None = Field(description="The version closing wrote.")
    created_by: uuid.UUID | None
    created_at: dt.datetime
    closed_at: dt.datetime | None
    progress: QueueProgress | None = None
    agreement: dict[str, Any] | None = Field(
        None,
        description="Over the pairs two or more labellers graded: krippendorff_alpha (ordinal), "
        "exact_agreement, cohen_kappa per two labellers (quadratic weights).",
    )


class ItemToLabel(BaseModel):
    id: uuid.UUID
    position: int
    query: str
    product_id: str
    product_text: str


class NextItem(BaseModel):
    queue_id: uuid.UUID
    status: LabelingStatus
    grades: list[int] = Field(description="The grades to choose from, lowest (irrelevant) first.")
    item: ItemToLabel | None = Field(description="Your next pair; null when you have none left.")
    done: int = Field(description="Pairs of yours labelled or skipped.")
    assigned: int = Field(description="Pairs assigned to you.")


class LabelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grade: int | None = Field(None, ge=0, le=100)
    skip: bool = False
    reason: str | None = Field(None, min_length=1, max_length=500, description="Why it was skipped.")

    @model_validator(mode="after")
    def _one(self) -> LabelCreate:
        if self.skip == (self.grade is not None):
            raise ValueError("give a grade, or skip: true with a reason")
        if self.skip and not self.reason:
            raise ValueError("a skip needs a reason (the product page is broken, the query is unclear, ...)")
        return self


class LabelRead(BaseModel):
    item_id: uuid.UUID
    status: AssignmentStatus
    grade: int | None
    skip_reason: str | None
    answered_at: dt.datetime | None
    done: int
    assigned: int


class QueueClose(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_name: str | None = Field(None, min_length=1, max_length=200, description="Default: the queue's.")
    base_dataset_version_id: uuid.UUID | None = Field(
        None, description="Relevance judgments to merge with (default: the queue's); the labels win a tie."
    )
    description: str = Field("", max_length=2000)
    split_seed: int = Field(42, ge=0, le=2**31 - 1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self) -> QueueClose:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        return self
