from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.pipelines import controller, service
from services.api.pipelines.schemas import (
    PipelineCreate,
    PipelineRead,
    PipelineUpdate,
    RunCreate,
    RunDecision,
    RunRead,
)
from services.api.streams import event_stream
from shared.jobs import pipeline_channel
from shared.models import PipelineRun
from shared.models.enums import PipelineStatus, RunStatus, TriggerKind
from shared.models.pipelines import ACTIVE_RUN

router = APIRouter(tags=["pipelines"])


@router.post(
    "/projects/{project_id}/pipelines",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelineRead,
    responses=ERRORS,
)
async def create_pipeline(
    data: PipelineCreate, ctx: ProjectDep, session: SessionDep, resources: ResourcesDep
) -> PipelineRead:
    """Save a pipeline: what retrains the role, when (triggers), on what (training), how a candidate
    proves itself (gate, approval, canary) and who is told (webhooks, tasks). Everything a run needs is
    checked now: a gate rule on a metric the golden set cannot produce answers 422 here."""
    return await service.create(session, resources.settings, ctx, data)


@router.get("/projects/{project_id}/pipelines", response_model=list[PipelineRead], responses=ERRORS)
async def list_pipelines(ctx: ProjectDep, session: SessionDep) -> list[PipelineRead]:
    return await service.list_pipelines(session, ctx)


@router.get("/pipelines/{pipeline_id}", response_model=PipelineRead, responses=ERRORS)
async def get_pipeline(pipeline_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> PipelineRead:
    _, pipeline = await service.load(session, principal, pipeline_id)
    return service.to_read(pipeline)


@router.patch("/pipelines/{pipeline_id}", response_model=PipelineRead, responses=ERRORS)
async def update_pipeline(
    pipeline_id: uuid.UUID,
    data: PipelineUpdate,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
) -> PipelineRead:
    """Change what is given; a run going on keeps the specs it started with."""
    ctx, pipeline = await service.load(session, principal, pipeline_id, for_update=True)
    return await service.update(session, resources.settings, ctx, pipeline, data)


@router.delete("/pipelines/{pipeline_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_pipeline(pipeline_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> Response:
    ctx, pipeline = await service.load(session, principal, pipeline_id, for_update=True)
    await service.delete(session, ctx, pipeline)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/pipelines/{pipeline_id}/pause", response_model=PipelineRead, responses=ERRORS)
async def pause_pipeline(
    pipeline_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> PipelineRead:
    """No trigger fires while paused; a run going on goes on."""
    ctx, pipeline = await service.load(session, principal, pipeline_id, for_update=True)
    return await service.set_status(session, ctx, pipeline, PipelineStatus.paused)


@router.post("/pipelines/{pipeline_id}/resume", response_model=PipelineRead, responses=ERRORS)
async def resume_pipeline(
    pipeline_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> PipelineRead:
    """Triggers fire again; cron ticks missed while paused do not, the next one does."""
    ctx, pipeline = await service.load(session, principal, pipeline_id, for_update=True)
    return await service.set_status(session, ctx, pipeline, PipelineStatus.active)


@router.post(
    "/pipelines/{pipeline_id}/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunRead,
    responses={**ERRORS, 409: {"description": "Another run of the pipeline is going"}},
)
async def run_pipeline(
    pipeline_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
    data: RunCreate | None = None,
) -> RunRead:
    """Start a run now (a paused pipeline too). The controller moves it on within seconds."""
    ctx, pipeline = await service.load(session, principal, pipeline_id)
    service.require_run(ctx)
    note = (data.note if data else "") or "started by hand"
    run = await controller.fire(
        resources,
        pipeline.id,
        TriggerKind.manual,
        f"manual:{uuid.uuid4()}",
        f"{note} (by {principal.user_id})",
        refuse_overlap=True,
    )
    assert run is not None
    return service.run_read(run)


@router.get("/projects/{project_id}/pipeline-runs", response_model=Page[RunRead], responses=ERRORS)
async def list_runs(
    ctx: ProjectDep,
    session: SessionDep,
    pipeline_id: uuid.UUID | None = None,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[RunRead]:
    """The project's pipeline runs, newest first."""
    return await service.list_runs(
        session, ctx, pipeline_id=pipeline_id, statuses=status, cursor=cursor, limit=limit
    )


@router.get("/pipeline-runs/{run_id}", response_model=RunRead, responses=ERRORS)
async def get_run(run_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> RunRead:
    _, run = await service.load_run(session, principal, run_id)
    return service.run_read(run)


@router.post("/pipeline-runs/{run_id}/approve", response_model=RunRead, responses=ERRORS)
async def approve_run(
    run_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
    data: RunDecision | None = None,
) -> RunRead:
    """A person of the pipeline's approver role (or above) lets a waiting run go on."""
    ctx, run = await service.load_run(session, principal, run_id, for_update=True)
    run = await controller.decide(
        session, resources, ctx, run, approve=True, reason=data.reason if data else ""
    )
    return service.run_read(run)


@router.post("/pipeline-runs/{run_id}/reject", response_model=RunRead, responses=ERRORS)
async def reject_run(
    run_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
    data: RunDecision | None = None,
) -> RunRead:
    """A person of the approver role ends a waiting run: nothing is deployed."""
    ctx, run = await service.load_run(session, principal, run_id, for_update=True)
    run = await controller.decide(
        session, resources, ctx, run, approve=False, reason=data.reason if data else ""
    )
    return service.run_read(run)


@router.post("/pipeline-runs/{run_id}/cancel", response_model=RunRead, responses=ERRORS)
async def cancel_run(
    run_id: uuid.UUID, session: SessionDep, principal: CurrentPerson, resources: ResourcesDep
) -> RunRead:
    """End a run going on: its queued or running jobs are cancelled, and a canary serving is taken
    down (production keeps all traffic)."""
    ctx, run = await service.load_run(session, principal, run_id, for_update=True)
    run = await controller.cancel(session, resources, ctx, run)
    return service.run_read(run)


@router.get(
    "/pipeline-runs/{run_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    response_class=StreamingResponse,
)
async def run_events(
    run_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: CurrentPerson,
    resources: ResourcesDep,
) -> StreamingResponse:
    """Server-sent events: `run` with the run as GET returns it, first at once, then on every change
    (and every 15 s); the stream ends when the run ends, or with an `end` event when the caller's key is
    revoked or expires. Streams count against RECFORGE_MAX_EVENT_STREAMS like job streams."""
    _, row = await service.load_run(session, principal, run_id)

    async def current(fresh: AsyncSession) -> RunRead:
        found = await fresh.get(PipelineRun, run_id)
        assert found is not None
        return service.run_read(found)

    return event_stream(
        request,
        resources,
        principal,
        event="run",
        first=service.run_read(row),
        channel=pipeline_channel(row.project_id),
        current=current,
        ended=lambda read: read.status.value not in ACTIVE_RUN,
        poll="GET /pipeline-runs/{id}",
    )
