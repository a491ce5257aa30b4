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
from shared.config import Settings
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


def _hour(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _bucket(hour: dt.datetime, bucket: Bucket) -> dt.datetime:
    return hour.replace(hour=0) if bucket == Bucket.day else hour


async def online_metrics(
    session: AsyncSession,
    ctx: ProjectContext,
    settings: Settings,
    *,
    role: OnlineRole,
    start: dt.datetime | None,
    end: dt.datetime | None,
    bucket: Bucket,
    k: int,
    version: uuid.UUID | None,
) -> OnlineMetrics:
    """Whole hours that ended more than ``online_rollup_delay_s`` ago come from the rollups (hours not
    rolled up yet are rolled up now, and kept); the rest of the window, and partial hours at its edges,
    from the raw tables. Both give the same sums, so a bucket may mix them."""
    start, end = _window(start, end, bucket)
    project_id = ctx.project.id
    closed_until = _hour(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.online_rollup_delay_s))
    first = _hour(start) + (dt.timedelta(hours=1) if _hour(start) < start else dt.timedelta(0))
    last = min(_hour(end), closed_until)
    parts: list[repository.Hourly] = []
    if first < last:
        await _fill(session, project_id, first, last)
        parts += await repository.rolled_up(session, project_id, role.value, first, last)
        live = [(start, first), (last, end)]
    else:
        live = [(start, end)]
    for since, until in live:
        if since < until:
            parts += await repository.hourly(session, project_id, role.value, since, until)
    sums: dict[tuple[dt.datetime, uuid.UUID | None], repository.Hourly] = {}
    for part in parts:
        if version is not None and part.version_id != version:
            continue
        key = (_bucket(part.hour, bucket), part.version_id)
        sums.setdefault(key, repository.Hourly(hour=key[0], version_id=key[1])).add(part)
    rows = [
        VersionMetrics(
            bucket=when,
            model_version_id=version_id,
            requests=total.requests,
            impressions=total.impressions,
            clicks=total.clicks,
            ctr_at_k=int(total.clicks_by_rank[:k].sum()) / total.requests,
            cart_rate=total.carts / total.requests,
            purchase_rate=total.purchases / total.requests,
            mrr=total.reciprocal_rank / total.requests,
            zero_click_rate=total.zero_click / total.requests,
            latency_p50_ms=round(total.latency_percentile(0.5), 3),
            latency_p99_ms=round(total.latency_percentile(0.99), 3),
        )
        for (when, version_id), total in sorted(sums.items(), key=lambda item: (item[0][0], str(item[0][1])))
        if total.requests
    ]
    return OnlineMetrics(project_id=project_id, role=role, bucket=bucket, k=k, from_=start, to=end, rows=rows)


async def _fill(session: AsyncSession, project_id: uuid.UUID, first: dt.datetime, last: dt.datetime) -> None:
    """Roll up the hours in [first, last) that have no rollups yet, in runs of consecutive hours."""
    done = await repository.hours_done(session, project_id, first, last)
    run_start: dt.datetime | None = None
    hour = first
    while hour <= last:
        missing = hour < last and hour not in done
        if missing and run_start is None:
            run_start = hour
        elif not missing and run_start is not None:
            await repository.roll_up(session, project_id, run_start, hour)
            run_start = None
        hour += dt.timedelta(hours=1)


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
