"""Pipelines: the continuous-learning loop of a project, its runs, and the webhooks that tell other
systems what the loop did."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, Timestamps, UUIDPk, enum_check
from shared.models.enums import (
    DeliveryStatus,
    DeploymentRole,
    PipelineStatus,
    ProjectRole,
    RunStatus,
    RunStep,
    TriggerKind,
)

ACTIVE_RUN = ("running", "awaiting_approval", "canary", "promoting")


class Pipeline(UUIDPk, Timestamps, Base):
    """What retrains a role of a project, when, and how a candidate must prove itself. The specs are
    JSON validated by the api's schemas (services.api.pipelines.schemas)."""

    __tablename__ = "pipelines"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        enum_check("role", DeploymentRole),
        enum_check("status", PipelineStatus),
        enum_check("approver_role", ProjectRole),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, server_default="")
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=PipelineStatus.active.value)
    triggers: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    training: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    gate: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    rollout: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    require_approval: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    approver_role: Mapped[str] = mapped_column(String(16), server_default=ProjectRole.maintainer.value)
    # whose name the loop acts in (jobs, promotions, tasks): the person who saved it, unless changed
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    milestone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("milestones.id", ondelete="SET NULL"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class PipelineRun(UUIDPk, Timestamps, Base):
    """One pass of the loop. Its steps, links and decisions are data on the row, so the API, the CLI
    and webhooks read one record. ``trigger_key`` is unique per pipeline: a tick fires once however many
    controllers see it; a partial unique index allows one run still going per pipeline."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "trigger_key"),
        UniqueConstraint("pipeline_id", "number"),
        enum_check("status", RunStatus),
        enum_check("step", RunStep),
        enum_check("trigger", TriggerKind),
        Index(
            "uq_pipeline_runs_one_going",
            "pipeline_id",
            unique=True,
            postgresql_where=text(f"status IN {ACTIVE_RUN!r}"),
        ),
        Index("ix_pipeline_runs_project_id_created_at", "project_id", "created_at"),
        Index("ix_pipeline_runs_going", "status", postgresql_where=text(f"status IN {ACTIVE_RUN!r}")),
    )

    pipeline_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))
    trigger_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), server_default=RunStatus.running.value)
    step: Mapped[str | None] = mapped_column(String(16))
    # [{name, status, started_at, finished_at, detail, links}]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    # ids of what the run made or used: feedback_job_id, dataset_version_id, training_job_id,
    # candidate_version_id, production_version_id, gate_job_ids, deployment_ids, task_ids
    links: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # the rules' figures and verdicts
    judge: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # per look: counts, rates, statistic, p
    outcome: Mapped[str | None] = mapped_column(Text)  # a reason a person can read
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")  # the pipeline as it ran
    canary_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Webhook(UUIDPk, Timestamps, Base):
    __tablename__ = "webhooks"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    # HMAC-SHA-256 key of the signature header; shown once, when the hook is made
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    description: Mapped[str] = mapped_column(String(500), server_default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class WebhookDelivery(UUIDPk, CreatedAt, Base):
    """One event for one hook: written in the transaction that made the event, sent after it, retried
    with backoff until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        enum_check("status", DeliveryStatus),
        Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
