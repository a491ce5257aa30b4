from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.tasks import service
from services.api.tasks.schemas import CommentCreate, CommentRead, TaskCreate, TaskRead, TaskUpdate
from shared.models.enums import TaskStatus

router = APIRouter(tags=["tasks"])


@router.get("/projects/{project_id}/tasks", response_model=Page[TaskRead], responses=ERRORS)
async def list_tasks(
    ctx: ProjectDep,
    session: SessionDep,
    assignee: Annotated[str | None, Query(description="A user id, `me` or `none`.", max_length=36)] = None,
    task_status: Annotated[list[TaskStatus] | None, Query(alias="status", description="Repeatable.")] = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    due_before: dt.date | None = None,
    milestone_id: uuid.UUID | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[TaskRead]:
    return await service.list_tasks(
        session,
        ctx,
        assignee=assignee,
        statuses=task_status,
        label=label,
        due_before=due_before,
        milestone_id=milestone_id,
        cursor=cursor,
        limit=limit,
    )


@router.post(
    "/projects/{project_id}/tasks",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses=ERRORS,
)
async def create_task(ctx: ProjectDep, data: TaskCreate, session: SessionDep) -> TaskRead:
    return await service.create(session, ctx, data)


@router.get("/tasks/{task_id}", response_model=TaskRead, responses=ERRORS)
async def get_task(task_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> TaskRead:
    _, task = await service.load(session, principal, task_id)
    return TaskRead.model_validate(task)


@router.patch("/tasks/{task_id}", response_model=TaskRead, responses=ERRORS)
async def update_task(
    task_id: uuid.UUID, data: TaskUpdate, session: SessionDep, principal: CurrentPerson
) -> TaskRead:
    """Edit a task or move it along the workflow; an illegal move answers 409 and changes nothing."""
    ctx, task = await service.load(session, principal, task_id, for_update=True)
    return await service.update(session, ctx, task, data)


@router.delete("/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_task(task_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> Response:
    ctx, task = await service.load(session, principal, task_id, for_update=True)
    await service.delete(session, ctx, task)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/tasks/{task_id}/comments", response_model=list[CommentRead], responses=ERRORS)
async def list_comments(
    task_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> list[CommentRead]:
    _, task = await service.load(session, principal, task_id)
    return await service.list_comments(session, task)


@router.post(
    "/tasks/{task_id}/comments",
    status_code=status.HTTP_201_CREATED,
    response_model=CommentRead,
    responses=ERRORS,
)
async def add_comment(
    task_id: uuid.UUID, data: CommentCreate, session: SessionDep, principal: CurrentPerson
) -> CommentRead:
    ctx, task = await service.load(session, principal, task_id)
    return await service.add_comment(session, ctx, task, data)
