from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Dataset, Deployment, Milestone, ModelVersion, Task, TaskComment, TrainingJob

LINKED = {
    "milestone_id": Milestone,
    "dataset_id": Dataset,
    "training_job_id": TrainingJob,
    "model_version_id": ModelVersion,
    "deployment_id": Deployment,
}


async def belongs_to_project(
    session: AsyncSession, field: str, row_id: uuid.UUID, project_id: uuid.UUID
) -> bool:
    model: Any = LINKED[field]
    query = select(model.id).where(model.id == row_id, model.project_id == project_id)
    return (await session.execute(query)).first() is not None


async def list_tasks(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    assignee: uuid.UUID | None,
    unassigned: bool,
    statuses: list[str] | None,
    label: str | None,
    due_before: dt.date | None,
    milestone_id: uuid.UUID | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Task]:
    query = select(Task).where(Task.project_id == project_id)
    if assignee is not None:
        query = query.where(Task.assignee_id == assignee)
    if unassigned:
        query = query.where(Task.assignee_id.is_(None))
    if statuses:
        query = query.where(Task.status.in_(statuses))
    if label:
        query = query.where(Task.labels.contains([label]))
    if due_before is not None:
        query = query.where(Task.due_date < due_before)
    if milestone_id is not None:
        query = query.where(Task.milestone_id == milestone_id)
    if after is not None:
        query = query.where(
            or_(Task.created_at > after[0], and_(Task.created_at == after[0], Task.id > after[1]))
        )
    query = query.order_by(Task.created_at, Task.id).limit(limit)
    return list((await session.execute(query)).scalars())


async def list_comments(session: AsyncSession, task_id: uuid.UUID) -> list[TaskComment]:
    query = (
        select(TaskComment)
        .where(TaskComment.task_id == task_id)
        .order_by(TaskComment.created_at, TaskComment.id)
    )
    return list((await session.execute(query)).scalars())
