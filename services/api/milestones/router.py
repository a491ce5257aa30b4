from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import SessionDep
from services.api.errors import ERRORS
from services.api.milestones import service
from services.api.milestones.schemas import MilestoneCreate, MilestoneRead, MilestoneUpdate

router = APIRouter(tags=["milestones"])


@router.get("/projects/{project_id}/milestones", response_model=list[MilestoneRead], responses=ERRORS)
async def list_milestones(ctx: ProjectDep, session: SessionDep) -> list[MilestoneRead]:
    return await service.list_milestones(session, ctx)


@router.post(
    "/projects/{project_id}/milestones",
    status_code=status.HTTP_201_CREATED,
    response_model=MilestoneRead,
    responses=ERRORS,
)
async def create_milestone(ctx: ProjectDep, data: MilestoneCreate, session: SessionDep) -> MilestoneRead:
    return await service.create(session, ctx, data)


@router.get("/milestones/{milestone_id}", response_model=MilestoneRead, responses=ERRORS)
async def get_milestone(
    milestone_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> MilestoneRead:
    _, milestone = await service.load(session, principal, milestone_id)
    return MilestoneRead.model_validate(milestone)


@router.patch("/milestones/{milestone_id}", response_model=MilestoneRead, responses=ERRORS)
async def update_milestone(
    milestone_id: uuid.UUID, data: MilestoneUpdate, session: SessionDep, principal: CurrentPerson
) -> MilestoneRead:
    ctx, milestone = await service.load(session, principal, milestone_id)
    return await service.update(session, ctx, milestone, data)


@router.delete("/milestones/{milestone_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_milestone(
    milestone_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> Response:
    ctx, milestone = await service.load(session, principal, milestone_id)
    await service.delete(session, ctx, milestone)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
