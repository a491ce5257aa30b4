"""Online metrics: how each deployed version does with shoppers, per hour or day."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import ProjectContext
from services.api.deps import ApiResources
from services.api.feedback import repository
from services.api.feedback.schemas import (
    Bucket,
    FeedbackJobCreate,
    OnlineMetrics,
    OnlineRole,
    VersionMetrics,
)
from services.api.projects.permissions import Action
from services.api.training import repository as training_repository
from services.api.training import service as training
from shared.errors import Conflict, ValidationFailed
from shared.feedback import FeedbackOptions
from shared.models import TrainingJob
from shared.models.enums import DatasetKind, JobStatus, JobType

DEFAULT_WINDOW = dt.timedelta(days=7)
MAX_WINDOW = {Bucket.hour: dt.timedelta(days=31), Bucket.day: dt.timedelta(days=366)}


def _window(
    start: dt.datetime | None, end: dt.datetime | None, bucket: Bucket
) -> tuple[dt.datetime, dt.datetime]:
    end = end or dt.datetime.now(dt.UTC)
    start = start or end - DEFAULT_WINDOW
    if start >= end:
        raise ValidationFailed(
            "from must be before to", detail=[{"loc": ["query", "from"], "msg": "not before to"}]
        )
    if end - start > MAX_WINDOW[bucket]:
        most = MAX_WINDOW[bucket].days
        raise ValidationFailed(
            f"a window of {bucket.value}s spans at most {most} days: narrow from/to, or use bucket=day",
            detail=[{"loc": ["query", "from"], "msg": f"more than {most} days before to"}],
        )
    return start, end


async def online_metrics(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    role: OnlineRole,
    start: dt.datetime | None,
    end: dt.datetime | None,
    bucket: Bucket,
    k: int,
    version: uuid.UUID | None,
) -> OnlineMetrics:
    start, end = _window(start, end, bucket)
    rows = await repository.online_metrics(
        session,
        ctx.project.id,
        role=role.value,
        start=start,
        end=end,
        bucket=bucket.value,
        k=k,
        version=version,
    )
    return OnlineMetrics(
        project_id=ctx.project.id,
        role=role,
        bucket=bucket,
        k=k,
        from_=start,
        to=end,
        rows=[VersionMetrics(model_version_id=row.pop("version_id"), **row) for row in rows],
    )


async def submit_feedback_job(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    data: FeedbackJobCreate,
    idempotency_key: str | None,
) -> training.Submitted:
    """Queue a feedback job over a window of the project's impressions (the trainer runs it)."""
    ctx.require(Action.run_jobs)
    ctx.require(Action.write_datasets)
    end = data.to or dt.datetime.now(dt.UTC)
    start = data.from_ or end - DEFAULT_WINDOW
    fields = data.model_dump(
        exclude={"from_", "to", "base_dataset_version_id", "priority", "compute_limit_hours"}
    )
    try:
        options = FeedbackOptions(start=start, end=end, **fields)
    except PydanticValidationError as exc:
        message = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise ValidationFailed(message, detail=[{"loc": ["body"], "msg": message}]) from None
    params = options.model_dump(mode="json")

    def replay(first: TrainingJob) -> training.Submitted:
        same = (
            first.job_type == JobType.feedback.value
            and first.dataset_version_id == data.base_dataset_version_id
            and (data.from_ is None or first.hyperparameters.get("start") == params["start"])
            and (data.to is None or first.hyperparameters.get("end") == params["end"])
            and all(first.hyperparameters.get(name) == params[name] for name in fields)
        )
        if not same:
            raise Conflict(
                "this Idempotency-Key was used for a different request; use a new key for a new job",
                detail={"job_id": str(first.id)},
            )
        return training.Submitted(training.to_read(first), replayed=True)

    if idempotency_key is not None:
        first = await training_repository.by_idempotency_key(session, ctx.project.id, idempotency_key)
        if first is not None:
            return replay(first)
    training.ensure_running(ctx)
    if data.base_dataset_version_id is not None:
        found = await training_repository.dataset_version_in_project(
            session, data.base_dataset_version_id, ctx.project.id
        )
        if found is None:
            raise ValidationFailed(
                "base_dataset_version_id: no such dataset version in this project",
                detail=[{"loc": ["body", "base_dataset_version_id"], "msg": "not in this project"}],
            )
        if found[1].kind != DatasetKind.relevance.value:
            raise ValidationFailed(
                f"base_dataset_version_id: feedback merges with relevance judgments, not {found[1].kind}",
                detail=[{"loc": ["body", "base_dataset_version_id"], "msg": "not relevance data"}],
            )
    job = TrainingJob(
        project_id=ctx.project.id,
        job_type=JobType.feedback.value,
        dataset_version_id=data.base_dataset_version_id,
        hyperparameters=params,
        status=JobStatus.queued.value,
        priority=data.priority,
        idempotency_key=idempotency_key,
        device="cpu",
        compute_limit_hours=data.compute_limit_hours,
        created_by=ctx.principal.user_id,
    )
    return await training.insert_job(session, resources, ctx, job, "cpu", replay)
