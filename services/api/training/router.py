from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from services.api.context import CurrentPerson, ProjectDep, still_valid
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.training import repository, service
from services.api.training.schemas import JobCreate, JobRead, ModelVersionRead
from shared.errors import TooManyRequests
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
KEEPALIVE_S = 15.0


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


def _sse(event: str, payload: str) -> bytes:
    return f"event: {event}\ndata: {payload}\n\n".encode()


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
    first = await service.get(session, job)
    streams = resources.event_streams
    if streams.available_tokens < 1:
        raise TooManyRequests(
            f"{streams.total_tokens:.0f} event streams are open on this server (RECFORGE_MAX_EVENT_STREAMS): "
            "poll GET /training-jobs/{id}, or retry shortly",
            retry_after=KEEPALIVE_S,
        )

    async def current() -> tuple[JobRead, str | None]:
        """The job as it is now, and why the caller's key may no longer follow it (or None)."""
        async with resources.sessionmaker() as fresh:
            refusal = await still_valid(fresh, principal)
            row = await repository.get_job(fresh, job_id)
            assert row is not None
            return await service.get(fresh, row), refusal

    async def stream() -> AsyncIterator[bytes]:
        # taken here, where the finally below is sure to give it back (a stream that never starts
        # holds nothing); two requests racing for the last one: the loser's stream ends at once
        try:
            streams.acquire_nowait()
        except anyio.WouldBlock:
            yield _sse("end", json.dumps({"reason": "too many event streams are open; retry shortly"}))
            return
        try:
            read = first
            yield _sse("job", read.model_dump_json())
            if JobStatus(read.status) in service.TERMINAL:
                return
            pubsub = resources.redis.pubsub()
            await pubsub.subscribe(progress_channel(job_id))
            try:
                while not await request.is_disconnected():
                    # a progress message or KEEPALIVE_S of silence: either way, send the job as it is now
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=KEEPALIVE_S)
                    read, refusal = await current()
                    if refusal is not None:  # the key was revoked or expired while the stream was open
                        yield _sse("end", json.dumps({"reason": refusal}))
                        return
                    yield _sse("job", read.model_dump_json())
                    if JobStatus(read.status) in service.TERMINAL:
                        return
                    await asyncio.sleep(0)
            finally:
                await pubsub.unsubscribe()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            streams.release()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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
