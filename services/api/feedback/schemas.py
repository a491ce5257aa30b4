from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Bucket(StrEnum):
    hour = "hour"
    day = "day"


class OnlineRole(StrEnum):
    retriever = "retriever"
    reranker = "reranker"


class VersionMetrics(BaseModel):
    """One model version in one time bucket. Rates are per impressed request."""

    bucket: dt.datetime = Field(description="The start of the hour or day (UTC).")
    model_version_id: uuid.UUID | None = Field(description="Null: the version was deleted since.")
    requests: int = Field(description="Requests answered (each one an impression row).")
    impressions: int = Field(description="Products shown, over all those requests.")
    clicks: int
    ctr_at_k: float = Field(description="Clicks on the top k products per request.")
    cart_rate: float = Field(description="Carts per request.")
    purchase_rate: float = Field(description="Purchases per request.")
    mrr: float = Field(description="Mean reciprocal rank of the best-placed click (0 for no click).")
    zero_click_rate: float = Field(description="Share of requests without a click.")
    latency_p50_ms: float = Field(description="The service's own time to answer, median.")
    latency_p99_ms: float


class OnlineMetrics(BaseModel):
    project_id: uuid.UUID
    role: OnlineRole
    bucket: Bucket
    k: int
    from_: dt.datetime = Field(alias="from", serialization_alias="from")
    to: dt.datetime
    rows: list[VersionMetrics]

    model_config = {"populate_by_name": True}


class FeedbackJobCreate(BaseModel):
    """A feedback job: the impressions served in [from, to) and the clicks, carts and purchases that came
    of them become a new version of a relevance dataset (and of NAME-sequences)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: AwareDatetime | None = Field(
        None,
        alias="from",
        description="The window's start, by when results were served; default: `to` - 7 days.",
    )
    to: AwareDatetime | None = Field(None, description="The window's end (exclusive); default: now.")
    name: str = Field(
        "feedback", min_length=1, max_length=180, description="The relevance dataset to add a version to."
    )
    base_dataset_version_id: uuid.UUID | None = Field(
        None,
        description="A relevance version of people's judgments to merge in: where both grade a pair, the "
        "judgment wins. Its rows keep their splits (the same split seed and fractions are used).",
    )
    min_impressions: int = Field(10, ge=1, le=1_000_000, description="Pairs shown fewer times are left out.")
    cart_weight: float = Field(2.0, ge=0, le=100, description="How much more a cart counts than a click.")
    purchase_weight: float = Field(
        4.0, ge=0, le=100, description="How much more a purchase counts than a click."
    )
    max_grade: float = Field(3.0, gt=0, le=100, description="The top of the grade scale written.")
    sequences: bool = Field(True, description="Also write NAME-sequences from shoppers' carts and purchases.")
    split_seed: int = Field(42, ge=0, le=2**31 - 1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    priority: int = Field(5, ge=0, le=9, description="9 runs first, 0 last.")
    compute_limit_hours: float = Field(
        0.25, gt=0, le=10_000, description="The most compute the job may use; reserved against the budget."
    )
