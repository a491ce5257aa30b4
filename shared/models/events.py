from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, enum_check
from shared.models.enums import EventType


class Event(Base):
    """Shopper feedback on served results, for feedback training and online metrics."""

    __tablename__ = "events"
    __table_args__ = (
        enum_check("event_type", EventType),
        Index("ix_events_project_id_occurred_at", "project_id", "occurred_at"),
        # an event sent again under its id is stored once
        Index(
            "uq_events_project_id_event_id",
            "project_id",
            "event_id",
            unique=True,
            postgresql_where=text("event_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), index=True
    )
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    event_id: Mapped[str | None] = mapped_column(String(64))  # the caller's, for retries
    event_type: Mapped[str] = mapped_column(String(16))
    # The shopper's id in the caller's system, not a RecForge user.
    user_id: Mapped[str | None] = mapped_column(String(200))
    product_id: Mapped[str] = mapped_column(String(200))
    position: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Impression(Base):
    """What the inference service served for one request: the products in the order shown (position =
    index in ``product_ids``), and who answered. Clicks, carts and purchases sent later with the same
    request id are judged against it (online metrics, feedback datasets)."""

    __tablename__ = "impressions"
    __table_args__ = (
        CheckConstraint("arm IN ('primary', 'canary')", name="arm_valid"),
        CheckConstraint("endpoint IN ('recommend', 'rerank')", name="endpoint_valid"),
        Index("ix_impressions_project_id_served_at", "project_id", "served_at"),
        Index("ix_impressions_project_id_request_id", "project_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    request_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(16))
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), index=True
    )
    reranker_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    arm: Mapped[str] = mapped_column(String(8), server_default="primary")
    query: Mapped[str | None] = mapped_column(String(1000))
    user_id: Mapped[str | None] = mapped_column(String(200))
    product_ids: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    latency_ms: Mapped[float] = mapped_column(Float)
    # the top k was shown in a random order (the project's exploration share)
    explored: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OnlineRollup(Base):
    """One hour of one model version's online metrics in one role, summed so that any window of hours
    or days adds up from these rows: counts, clicks per rank (CTR@k for any k) and a latency histogram
    (percentiles). Rows are rewritten while late events may still arrive (services.api.feedback)."""

    __tablename__ = "online_rollups"
    __table_args__ = (
        CheckConstraint("role IN ('retriever', 'reranker')", name="role_valid"),
        UniqueConstraint(
            "project_id", "role", "hour", "model_version_id", postgresql_nulls_not_distinct=True
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), index=True
    )
    requests: Mapped[int] = mapped_column(BigInteger)
    impressions: Mapped[int] = mapped_column(BigInteger)
    clicks: Mapped[int] = mapped_column(BigInteger)
    carts: Mapped[int] = mapped_column(BigInteger)
    purchases: Mapped[int] = mapped_column(BigInteger)
    zero_click: Mapped[int] = mapped_column(BigInteger)  # requests without a click
    reciprocal_rank: Mapped[float] = mapped_column(Float)  # sum over requests of 1 / best click's rank
    clicks_by_rank: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))  # [0]: clicks at rank 1
    latency_histogram: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))  # shared.metrics buckets


class OnlineRollupHour(Base):
    """An hour of a project whose rollups are written (also when it served nothing), and when."""

    __tablename__ = "online_rollup_hours"

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
