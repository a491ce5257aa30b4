"""Task rules: assignees are members, links stay inside the project, status moves along the workflow."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.integrations import outbox as integrations
from services.api.pagination import Page, decode_time_cursor, time_cursor
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.schemas import snapshot
from services.api.tasks import repository
from services.api.tasks.schemas import CommentCreate, CommentRead, TaskCreate, TaskRead, TaskUpdate
from shared.errors import Conflict, ValidationFailed
from shared.models import Task, TaskComment
from shared.models.enums import TaskStatus

S = TaskStatus
# The workflow: todo -> in_progress -> in_review -> done, with blocked beside it and ways back.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.todo: frozenset({S.in_progress, S.blocked}),
    S.in_progress: frozenset({S.in_review, S.blocked, S.todo}),
    S.in_review: frozenset({S.done, S.in_progress, S.blocked}),
    S.blocked: frozenset({S.todo, S.in_progress}),
    S.done: frozenset({S.in_progress}),  # reopen
}

FIELDS = (
    "title", "description", "status", "priority", "assignee_id", "milestone_id", "due_date", "estimate_hours",
    "labels", "dataset_id", "training_job_id", "model_version_id", "deployment_id",
)  # fmt: skip


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", detail=[{"loc": ["body", field], "msg": message}])


async def _check_references(session: AsyncSession, ctx: ProjectContext, values: dict[str, Any]) -> None:
    assignee = values.get("assignee_id")
    if (
        assignee is not None
        and await projects_repository.member_role(session, ctx.project.id, assignee) is None
    ):
        raise _invalid("assignee_id", "the assignee must be a member of the project")
    for field in repository.LINKED:
        row_id = values.get(field)
        if row_id is not None and not await repository.belongs_to_project(
            session, field, row_id, ctx.project.id
        ):
            raise _invalid(field, f"no such {field.removesuffix('_id').replace('_', ' ')} in this project")


async def create(session: AsyncSession, ctx: ProjectContext, data: TaskCreate) -> TaskRead:
    ctx.require(Action.write_tasks)
    values = data.model_dump(exclude_none=True)
    await _check_references(session, ctx, values)
    if "priority" in values:
        values["priority"] = values["priority"].value
    task = Task(project_id=ctx.project.id, created_by=ctx.principal.user_id, **values)
    session.add(task)
    await session.flush()
    await session.refresh(task)
    await audit_change(session, ctx, "task.create", "task", task.id, None, snapshot(task, FIELDS))
    await integrations.task_created(session, task)
    return TaskRead.model_validate(task)


async def load(
    session: AsyncSession, principal: Principal, task_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, Task]:
    """The task and its project context; a task in a project the caller cannot see is a 404."""
    return await load_entity(session, principal, Task, task_id, "task", for_update=for_update)


async def update(session: AsyncSession, ctx: ProjectContext, task: Task, data: TaskUpdate) -> TaskRead:
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return TaskRead.model_validate(task)
    ctx.require(Action.write_tasks)
    await _check_references(session, ctx, changes)
    before = snapshot(task, FIELDS)
    new_status = changes.pop("status", None)
    if new_status is not None and new_status.value != task.status:
        current = TaskStatus(task.status)
        if new_status not in TRANSITIONS[current]:
            raise Conflict(
                f"a task cannot move from {current.value} to {new_status.value}",
                detail={
                    "from": current.value,
                    "to": new_status.value,
                    "allowed": sorted(s.value for s in TRANSITIONS[current]),
                },
            )
        task.status = new_status.value
        task.completed_at = dt.datetime.now(dt.UTC) if new_status == TaskStatus.done else None
    for name, value in changes.items():
        setattr(task, name, value.value if name == "priority" else value)
    await session.flush()
    await session.refresh(task)
    after = snapshot(task, FIELDS)
    changed = [k for k in FIELDS if before[k] != after[k]]
    if changed:
        await audit_change(
            session,
            ctx,
            "task.update",
            "task",
            task.id,
            {k: before[k] for k in changed},
            {k: after[k] for k in changed},
        )
        await integrations.task_changed(session, task, before, {k: after[k] for k in changed})
    return TaskRead.model_validate(task)


async def delete(session: AsyncSession, ctx: ProjectContext, task: Task) -> None:
    ctx.require(Action.delete_tasks)
    before = snapshot(task, FIELDS)
    await session.delete(task)
    await session.flush()
    await audit_change(session, ctx, "task.delete", "task", task.id, before, None)


async def list_tasks(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    assignee: str | None,
    statuses: list[TaskStatus] | None,
    label: str | None,
    due_before: dt.date | None,
    milestone_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> Page[TaskRead]:
    assignee_id, unassigned = None, False
    if assignee == "me":
        assignee_id = ctx.principal.user_id
    elif assignee == "none":
        unassigned = True
    elif assignee:
        try:
            assignee_id = uuid.UUID(assignee)
        except ValueError:
            raise ValidationFailed(
                "assignee must be a user id, 'me' or 'none'",
                detail=[{"loc": ["query", "assignee"], "msg": "not a user id, 'me' or 'none'"}],
            ) from None
    after = decode_time_cursor(cursor)
    rows = await repository.list_tasks(
        session,
        ctx.project.id,
        assignee=assignee_id,
        unassigned=unassigned,
        statuses=[s.value for s in statuses] if statuses else None,
        label=label.lower() if label else None,
        due_before=due_before,
        milestone_id=milestone_id,
        after=after,
        limit=limit + 1,
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = time_cursor(last.created_at, last.id)
    return Page(items=[TaskRead.model_validate(t) for t in rows[:limit]], next_cursor=next_cursor)


async def add_comment(
    session: AsyncSession, ctx: ProjectContext, task: Task, data: CommentCreate
) -> CommentRead:
    ctx.require(Action.write_tasks)
    comment = TaskComment(task_id=task.id, author_id=ctx.principal.user_id, body=data.body)
    session.add(comment)
    await session.flush()
    await session.refresh(comment)
    await audit_change(session, ctx, "task.comment", "task", task.id, None, {"comment_id": str(comment.id)})
    return CommentRead.model_validate(comment)


async def list_comments(session: AsyncSession, task: Task) -> list[CommentRead]:
    return [CommentRead.model_validate(c) for c in await repository.list_comments(session, task.id)]
