"""Training jobs: submission (validated, budgeted, idempotent), cancel, retry, reads.

The row is written and committed first; the arq job is enqueued only after the commit."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.deps import ApiResources
from services.api.pagination import Page, decode_int_cursor, decode_time_cursor, encode_cursor, time_cursor
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.projects.service import ensure_budget
from services.api.schemas import snapshot
from services.api.training import repository
from services.api.training.schemas import JobCreate, JobRead, ModelVersionRead
from shared.config import Settings
from shared.datasets.catalog import latest_catalog_version
from shared.db import after_commit
from shared.errors import Conflict, ValidationFailed
from shared.jobs import CANCEL_CHANNEL, enqueue_training_job
from shared.models import ModelVersion, TrainingJob
from shared.models.enums import JobStatus, JobType, ModelStatus, ModelTaskType, ProjectStatus
from shared.training import (
    DEFAULT_BASE_MODEL,
    EVALUATES_ON,
    FINE_TUNES,
    NEEDS_MODEL,
    TRAINS_ON,
    Hyperparameters,
    base_model_problem,
    hyperparameter_problem,
)

AUDIT_FIELDS = ("job_type", "status", "priority", "dataset_version_id", "input_model_version_id", "retries")
_IDEMPOTENT_FIELDS = (
    "job_type",
    "dataset_version_id",
    "input_model_version_id",
    "base_model",
    "hyperparameters",
    "priority",
    "compute_limit_hours",
)
TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


@dataclass(frozen=True)
class Submitted:
    job: JobRead
    replayed: bool


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", detail=[{"loc": ["body", field], "msg": message}])


def to_read(job: TrainingJob, outputs: list[uuid.UUID] | None = None) -> JobRead:
    read = JobRead.model_validate(job)
    read.model_version_ids = outputs or []
    return read


async def _validate(session: AsyncSession, settings: Settings, ctx: ProjectContext, data: JobCreate) -> None:
    project_id = ctx.project.id
    job_type = data.job_type
    if job_type == JobType.feedback:
        raise _invalid("job_type", f"feedback jobs are submitted to /projects/{project_id}/feedback-jobs")
    if job_type == JobType.labeling:
        raise _invalid("job_type", f"labelling queues are created at /projects/{project_id}/labeling-queues")
    unfit = hyperparameter_problem(job_type, data.hyperparameters)
    if unfit is not None:
        raise _invalid("hyperparameters", unfit)
    needs_data = job_type in FINE_TUNES or job_type == JobType.evaluate
    if needs_data and data.dataset_version_id is None:
        raise _invalid("dataset_version_id", f"a {job_type.value} job needs a dataset version")
    if job_type in NEEDS_MODEL and data.input_model_version_id is None:
        raise _invalid("input_model_version_id", f"a {job_type.value} job works on a model version")
    model = None
    if data.input_model_version_id is not None:
        model = await repository.model_version_in_project(session, data.input_model_version_id, project_id)
        if model is None:
            raise _invalid("input_model_version_id", "no such model version in this project")
        if job_type in NEEDS_MODEL and "model" not in model.artifacts:
            raise _invalid("input_model_version_id", "that model version has no ONNX graph")
        if job_type == JobType.index_catalog and model.task_type != ModelTaskType.bi_encoder.value:
            raise _invalid("input_model_version_id", "only a bi_encoder version embeds the catalog")
        if job_type in FINE_TUNES:
            raise _invalid(
                "input_model_version_id",
                "a fine-tune starts from a base model (a hub id or local folder), not from a model version",
            )
    if data.dataset_version_id is not None:
        found = await repository.dataset_version_in_project(session, data.dataset_version_id, project_id)
        if found is None:
            raise _invalid("dataset_version_id", "no such dataset version in this project")
        version, dataset = found
        if job_type == JobType.index_catalog:
            if "catalog" not in version.tables:
                raise _invalid("dataset_version_id", "an index job embeds a catalog: that version holds none")
        elif job_type == JobType.export:
            raise _invalid("dataset_version_id", "an export job checks its version on the version's own data")
        else:
            kinds = TRAINS_ON.get(job_type) or (
                EVALUATES_ON[ModelTaskType(model.task_type)] if model else None
            )
            if kinds is not None and dataset.kind not in kinds:
                allowed = " or ".join(sorted(k.value for k in kinds))
                verb = "trains" if job_type in FINE_TUNES else "evaluates"
                raise _invalid(
                    "dataset_version_id",
                    f"a {job_type.value} job {verb} on {allowed} data, not {dataset.kind}",
                )
    elif job_type == JobType.index_catalog and await latest_catalog_version(session, project_id) is None:
        raise _invalid("dataset_version_id", "the project has no catalog to index: import one first")
    if job_type == JobType.export and model is not None and model.dataset_version_id is None:
        raise _invalid(
            "input_model_version_id", "that version's training data is gone: nothing to check it on"
        )
    if job_type not in FINE_TUNES and data.base_model is not None:
        raise _invalid("base_model", f"a {job_type.value} job uses its model version, not a base model")
    if data.base_model is not None:
        problem = base_model_problem(data.base_model, settings.model_root_paths, settings.data_dir)
        if problem is not None:
            raise _invalid("base_model", problem)


def _same_request(job: TrainingJob, data: JobCreate, base_model: str | None) -> bool:
    # the stored hyperparameters read through today's model, so a name added since (with its default)
    # does not make a replay of an older submission look like a different request
    stored = {name: getattr(job, name) for name in _IDEMPOTENT_FIELDS}
    with contextlib.suppress(ValidationError):  # one today's rules refuse is compared as it was stored
        stored["hyperparameters"] = Hyperparameters.model_validate(job.hyperparameters).model_dump()
    wanted = {
        "job_type": data.job_type.value,
        "dataset_version_id": data.dataset_version_id,
        "input_model_version_id": data.input_model_version_id,
        "base_model": base_model,
        "hyperparameters": data.hyperparameters.model_dump(),
        "priority": data.priority,
        "compute_limit_hours": data.compute_limit_hours,
    }
    return all(
        json.dumps(stored[name], default=str, sort_keys=True)
        == json.dumps(wanted[name], default=str, sort_keys=True)
        for name in _IDEMPOTENT_FIELDS
    )


async def submit(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    data: JobCreate,
    idempotency_key: str | None,
) -> Submitted:
    ctx.require(Action.run_jobs)
    base_model = (data.base_model or DEFAULT_BASE_MODEL) if data.job_type in FINE_TUNES else None
    if idempotency_key is not None:
        first = await repository.by_idempotency_key(session, ctx.project.id, idempotency_key)
        if first is not None:
            return _replay(first, data, base_model)
    ensure_running(ctx)
    await _validate(session, resources.settings, ctx, data)
    job = TrainingJob(
        project_id=ctx.project.id,
        job_type=data.job_type.value,
        dataset_version_id=data.dataset_version_id,
        input_model_version_id=data.input_model_version_id,
        base_model=base_model,
        hyperparameters=data.hyperparameters.model_dump(),
        status=JobStatus.queued.value,
        priority=data.priority,
        idempotency_key=idempotency_key,
        device=None if data.device == "auto" else data.device,
        compute_limit_hours=data.compute_limit_hours,
        created_by=ctx.principal.user_id,
    )
    return await insert_job(
        session, resources, ctx, job, data.device, lambda first: _replay(first, data, base_model)
    )


def ensure_running(ctx: ProjectContext) -> None:
    if ctx.project.status not in (ProjectStatus.proposed.value, ProjectStatus.active.value):
        raise Conflict(f"the project is {ctx.project.status}: it runs no new jobs")


async def insert_job(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    job: TrainingJob,
    device: str,
    replay: Callable[[TrainingJob], Submitted],
) -> Submitted:
    """Reserve the job's compute against the budget, write its row (once per Idempotency-Key: a
    concurrent twin is answered by ``replay``) and enqueue it after the commit."""
    project = await projects_repository.lock_project(session, ctx.project.id)
    reserved = await repository.reserved_hours(session, project.id)
    ensure_budget(project, device, job.compute_limit_hours, reserved)
    try:
        async with session.begin_nested():
            session.add(job)
    except IntegrityError:  # the same key, submitted concurrently
        if job.idempotency_key is None:
            raise
        first = await repository.by_idempotency_key(session, ctx.project.id, job.idempotency_key)
        assert first is not None
        return replay(first)
    await session.refresh(job)
    await audit_change(session, ctx, "job.submit", "training_job", job.id, None, snapshot(job, AUDIT_FIELDS))
    _enqueue_after_commit(session, resources, job)
    return Submitted(to_read(job), replayed=False)


def _replay(first: TrainingJob, data: JobCreate, base_model: str | None) -> Submitted:
    if not _same_request(first, data, base_model):
        raise Conflict(
            "this Idempotency-Key was used for a different request; use a new key for a new job",
            detail={"job_id": str(first.id)},
        )
    return Submitted(to_read(first), replayed=True)


def _enqueue_after_commit(session: AsyncSession, resources: ApiResources, job: TrainingJob) -> None:
    job_id, retries, priority, attempts = job.id, job.retries, job.priority, job.attempts

    async def enqueue() -> None:
        await enqueue_training_job(
            resources.redis,
            resources.settings.queue_name,
            job_id,
            retries=retries,
            priority=priority,
            attempts=attempts,
        )

    after_commit(session, enqueue)


async def job_context(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, TrainingJob]:
    return await load_entity(session, principal, TrainingJob, job_id, "training job", for_update=for_update)


async def get(session: AsyncSession, job: TrainingJob) -> JobRead:
    outputs = await repository.outputs(session, [job.id])
    return to_read(job, outputs.get(job.id))


async def cancel(
    session: AsyncSession, resources: ApiResources, ctx: ProjectContext, job: TrainingJob
) -> JobRead:
    """A queued job is cancelled at once; a running one is asked to stop (it stops within seconds,
    removes its partial files and ends ``cancelled``)."""
    ctx.require(Action.run_jobs)
    status = JobStatus(job.status)
    if status in TERMINAL:
        raise Conflict(f"the job has already {status.value}; nothing to cancel")
    before = snapshot(job, AUDIT_FIELDS)
    job.cancel_requested_at = func.now()
    if status == JobStatus.queued:
        job.status = JobStatus.cancelled.value
        job.finished_at = func.now()
    await session.flush()
    await session.refresh(job)
    await audit_change(
        session, ctx, "job.cancel", "training_job", job.id, before, snapshot(job, AUDIT_FIELDS)
    )
    if status == JobStatus.running:
        redis = resources.redis
        job_id = str(job.id)

        async def notify() -> None:
            await redis.publish(CANCEL_CHANNEL, job_id)

        after_commit(session, notify)
    return await get(session, job)


async def retry(
    session: AsyncSession, resources: ApiResources, ctx: ProjectContext, job: TrainingJob
) -> JobRead:
    """Run a failed or cancelled job again, from the start, as a new run of the same job."""
    ctx.require(Action.run_jobs)
    status = JobStatus(job.status)
    if status not in (JobStatus.failed, JobStatus.cancelled):
        raise Conflict(f"only failed or cancelled jobs are retried; this one is {status.value}")
    project = await projects_repository.lock_project(session, ctx.project.id)
    reserved = await repository.reserved_hours(session, project.id)
    ensure_budget(project, job.device or "cpu", job.compute_limit_hours, reserved)
    before = snapshot(job, AUDIT_FIELDS)
    job.status = JobStatus.queued.value
    job.retries += 1
    job.attempts = 0  # a person's retry starts with every run allowed again
    job.compute_seconds = 0.0  # ...and with its whole compute limit (the project was charged already)
    job.error = None
    job.result = None
    job.progress = {}
    job.cancel_requested_at = None
    job.started_at = None
    job.finished_at = None
    job.heartbeat_at = None
    job.worker_id = None
    job.queued_at = func.now()
    await session.flush()
    await session.refresh(job)
    await audit_change(session, ctx, "job.retry", "training_job", job.id, before, snapshot(job, AUDIT_FIELDS))
    _enqueue_after_commit(session, resources, job)
    return await get(session, job)


async def list_jobs(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    statuses: list[JobStatus] | None,
    job_type: JobType | None,
    cursor: str | None,
    limit: int,
) -> Page[JobRead]:
    rows = await repository.list_jobs(
        session,
        ctx.project.id,
        statuses=[s.value for s in statuses] if statuses else None,
        job_type=job_type.value if job_type else None,
        after=decode_time_cursor(cursor),
        limit=limit,
    )
    page = rows[:limit]
    outputs = await repository.outputs(session, [j.id for j in page])
    next_cursor = time_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page(items=[to_read(j, outputs.get(j.id)) for j in page], next_cursor=next_cursor)


async def model_version_context(
    session: AsyncSession, principal: Principal, version_id: uuid.UUID
) -> tuple[ProjectContext, ModelVersion]:
    return await load_entity(session, principal, ModelVersion, version_id, "model version")


async def list_model_versions(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    task_type: ModelTaskType | None,
    status: ModelStatus | None,
    cursor: str | None,
    limit: int,
) -> Page[ModelVersionRead]:
    rows = await repository.list_model_versions(
        session,
        ctx.project.id,
        task_type=task_type.value if task_type else None,
        status=status.value if status else None,
        before=decode_int_cursor(cursor),
        limit=limit,
    )
    page = rows[:limit]
    next_cursor = encode_cursor([page[-1].version]) if len(rows) > limit else None
    return Page(items=[ModelVersionRead.model_validate(v) for v in page], next_cursor=next_cursor)
