from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from pydantic import BaseModel, Field


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
