from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.streams import event_stream
from services.api.training import repository, service
from services.api.training.schemas import JobCreate, JobRead, ModelVersionRead
from shared.jobs import progress_channel
from shared.models.enums import JobStatus, JobType, ModelStatus, ModelTaskType

router = APIRouter(tags=["training"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeating a submission with the same key returns the first job instead of a new one.",
    ),
]


@router.post(
    "/projects/{project_id}/training-jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={**ERRORS, 409: {"description": "Over the compute budget, project not running, or key reused"}},
)
async def submit_job(
    data: JobCreate,
    ctx: ProjectDep,
    session: SessionDep,
    resources: ResourcesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a fine-tune, evaluation, export or catalog index. The job's `compute_limit_hours` is
    reserved against the project's budget; a job that does not fit is refused with 409."""
    submitted = await service.submit(session, resources, ctx, data, idempotency_key)
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.job


@router.get("/projects/{project_id}/training-jobs", response_model=Page[JobRead], responses=ERRORS)
async def list_jobs(
    ctx: ProjectDep,
    session: SessionDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    job_type: JobType | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[JobRead]:
    return await service.list_jobs(
        session, ctx, statuses=status, job_type=job_type, cursor=cursor, limit=limit
    )


@router.get("/training-jobs/{job_id}", response_model=JobRead, responses=ERRORS)
async def get_job(job_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> JobRead:
    _, job = await service.job_context(session, principal, job_id)
    return await service.get(session, job)


@router.post(
    "/training-jobs/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=ERRORS,
)
async def cancel_job(
    job_id: uuid.UUID, session: SessionDep, principal: CurrentPerson, resources: ResourcesDep
) -> JobRead:
    ctx, job = await service.job_context(session, principal, job_id, for_update=True)
    return await service.cancel(session, resources, ctx, job)


@router.post(
    "/training-jobs/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=ERRORS,
)
async def retry_job(
    job_id: uuid.UUID, session: SessionDep, principal: CurrentPerson, resources: ResourcesDep
) -> JobRead:
    ctx, job = await service.job_context(session, principal, job_id, for_update=True)
    return await service.retry(session, resources, ctx, job)


@router.get(
    "/training-jobs/{job_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    response_class=StreamingResponse,
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
) -> StreamingResponse:
    """Server-sent events: `job` with the job as GET returns it, first at once, then on every
    progress update (about every 2 s) and status change; the stream ends when the job ends, or with an
    `end` event when the caller's key is revoked or expires. At most RECFORGE_MAX_EVENT_STREAMS streams
    are open per server; more answer 429."""
    _, job = await service.job_context(session, principal, job_id)

    async def current(fresh: AsyncSession) -> JobRead:
        row = await repository.get_job(fresh, job_id)
        assert row is not None
        return await service.get(fresh, row)

    return event_stream(
        request,
        resources,
        principal,
        event="job",
        first=await service.get(session, job),
        channel=progress_channel(job_id),
        current=current,
        ended=lambda read: JobStatus(read.status) in service.TERMINAL,
        poll="GET /training-jobs/{id}",
    )


@router.get("/projects/{project_id}/model-versions", response_model=Page[ModelVersionRead], responses=ERRORS)
async def list_model_versions(
    ctx: ProjectDep,
    session: SessionDep,
    task_type: ModelTaskType | None = None,
    status: ModelStatus | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[ModelVersionRead]:
    """The project's model versions, newest first, with metrics beside their baselines."""
    return await service.list_model_versions(
        session, ctx, task_type=task_type, status=status, cursor=cursor, limit=limit
    )


@router.get("/model-versions/{version_id}", response_model=ModelVersionRead, responses=ERRORS)
async def get_model_version(
    version_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> ModelVersionRead:
    _, version = await service.model_version_context(session, principal, version_id)
    return ModelVersionRead.model_validate(version)
