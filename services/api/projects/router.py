from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.projects import service
from services.api.projects.schemas import (
    Budget,
    MemberAdd,
    MemberRead,
    MemberUpdate,
    ProgressRead,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
)
from shared.models.enums import ProjectStatus

router = APIRouter(tags=["projects"])


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectRead, responses=ERRORS)
async def create_project(
    data: ProjectCreate, session: SessionDep, principal: CurrentPerson, resources: ResourcesDep
) -> ProjectRead:
    """Propose a project. The caller becomes its owner (admins may name another owner). Without a
    budget it gets the installation's default (RECFORGE_DEFAULT_CPU_HOURS, RECFORGE_DEFAULT_GPU_HOURS)."""
    settings = resources.settings
    defaults = Budget(cpu_hours=settings.default_cpu_hours, gpu_hours=settings.default_gpu_hours)
    return await service.create_project(session, principal, data, defaults)


@router.get("/projects", response_model=Page[ProjectRead], responses=ERRORS)
async def list_projects(
    session: SessionDep,
    principal: CurrentPerson,
    status: ProjectStatus | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[ProjectRead]:
    """The projects the caller is a member of (admins: all projects)."""
    return await service.list_projects(session, principal, status=status, cursor=cursor, limit=limit)


@router.get("/projects/{project_id}", response_model=ProjectRead, responses=ERRORS)
async def get_project(ctx: ProjectDep) -> ProjectRead:
    return service.to_read(ctx.project, ctx.role)


@router.patch("/projects/{project_id}", response_model=ProjectRead, responses=ERRORS)
async def update_project(
    ctx: ProjectDep, data: ProjectUpdate, session: SessionDep, resources: ResourcesDep
) -> ProjectRead:
    """Change details, goal, dates, status, impression retention or exploration (owner, maintainer);
    budget and job limit (owner)."""
    return await service.update_project(session, ctx, data, resources.redis)


@router.get("/projects/{project_id}/members", response_model=list[MemberRead], responses=ERRORS)
async def list_members(ctx: ProjectDep, session: SessionDep) -> list[MemberRead]:
    return await service.list_members(session, ctx)


@router.post(
    "/projects/{project_id}/members",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberRead,
    responses=ERRORS,
)
async def add_member(ctx: ProjectDep, data: MemberAdd, session: SessionDep) -> MemberRead:
    return await service.add_member(session, ctx, data)


@router.patch("/projects/{project_id}/members/{user_id}", response_model=MemberRead, responses=ERRORS)
async def change_member(
    ctx: ProjectDep, user_id: uuid.UUID, data: MemberUpdate, session: SessionDep
) -> MemberRead:
    return await service.change_member(session, ctx, user_id, data)


@router.delete(
    "/projects/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS
)
async def remove_member(ctx: ProjectDep, user_id: uuid.UUID, session: SessionDep) -> Response:
    """Remove a member; their tasks become unassigned. The last owner cannot leave."""
    await service.remove_member(session, ctx, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/progress", response_model=ProgressRead, responses=ERRORS)
async def get_progress(ctx: ProjectDep, session: SessionDep) -> ProgressRead:
    """Done estimate / total estimate, overdue tasks, jobs running, budget, best model against the goal."""
    return await service.progress(session, ctx)
