from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Milestone, ModelVersion, Project, ProjectMember, Task, TrainingJob, User
from shared.models.enums import JobStatus
from shared.projects import project_by_ref


async def find_project(session: AsyncSession, ref: str, *, for_update: bool = False) -> Project | None:
    """By id or slug; an id always wins (shared.projects)."""
    return await project_by_ref(session, ref, for_update=for_update)


async def lock_project(session: AsyncSession, project_id: uuid.UUID) -> Project:
    """Lock the project's row (and read it afresh) for the rest of the transaction: membership
    changes (the last-owner rule reads, then writes), job submissions (two cannot both fit in the last
    of the budget) and promotions of one project run one at a time."""
    query = select(Project).where(Project.id == project_id).with_for_update()
    return (await session.execute(query.execution_options(populate_existing=True))).scalar_one()


async def slug_taken(session: AsyncSession, slug: str) -> bool:
    return (await session.execute(select(Project.id).where(Project.slug == slug))).first() is not None


async def member_role(session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    return (
        await session.execute(
            select(ProjectMember.role).where(
                ProjectMember.project_id == project_id, ProjectMember.user_id == user_id
            )
        )
    ).scalar_one_or_none()


async def list_projects(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    members_only: bool,
    status: str | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[tuple[Project, str | None]]:
    role = (
        select(ProjectMember.role)
        .where(ProjectMember.project_id == Project.id, ProjectMember.user_id == user_id)
        .scalar_subquery()
    )
    query = select(Project, role)
    if members_only:
        query = query.where(
            Project.id.in_(select(ProjectMember.project_id).where(ProjectMember.user_id == user_id))
        )
    if status:
        query = query.where(Project.status == status)
    if after:
        query = query.where(
            or_(Project.created_at > after[0], and_(Project.created_at == after[0], Project.id > after[1]))
        )
    query = query.order_by(Project.created_at, Project.id).limit(limit)
    return [(row[0], row[1]) for row in await session.execute(query)]


async def list_members(session: AsyncSession, project_id: uuid.UUID) -> list[tuple[ProjectMember, User]]:
    rows = await session.execute(
        select(ProjectMember, User)
        .join(User, User.id == ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id)
        .order_by(ProjectMember.created_at, User.id)
    )
    return [(row[0], row[1]) for row in rows]


async def get_member(
    session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID
) -> ProjectMember | None:
    return await session.get(ProjectMember, (project_id, user_id))


async def owners(session: AsyncSession, project_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.execute(
        select(ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id, ProjectMember.role == "owner")
        .order_by(ProjectMember.created_at)
    )
    return list(rows.scalars())


class TaskFigures(NamedTuple):
    """What progress needs of a task (not its text): thousands of tasks read in milliseconds."""

    status: str
    estimate_hours: float | None
    due_date: dt.date | None
    milestone_id: uuid.UUID | None


async def tasks_for_progress(session: AsyncSession, project_id: uuid.UUID) -> list[TaskFigures]:
    rows = await session.execute(
        select(Task.status, Task.estimate_hours, Task.due_date, Task.milestone_id).where(
            Task.project_id == project_id
        )
    )
    return [TaskFigures(*row) for row in rows.tuples()]


async def job_counts(session: AsyncSession, project_id: uuid.UUID) -> dict[str, int]:
    rows = await session.execute(
        select(TrainingJob.status, func.count())
        .where(
            TrainingJob.project_id == project_id,
            TrainingJob.status.in_([JobStatus.running.value, JobStatus.queued.value]),
        )
        .group_by(TrainingJob.status)
    )
    return {status: count for status, count in rows.tuples()}


async def model_versions_with_metric(session: AsyncSession, project_id: uuid.UUID) -> list[ModelVersion]:
    return list(
        (await session.execute(select(ModelVersion).where(ModelVersion.project_id == project_id))).scalars()
    )


async def milestones(session: AsyncSession, project_id: uuid.UUID) -> list[Milestone]:
    query = (
        select(Milestone)
        .where(Milestone.project_id == project_id)
        .order_by(Milestone.due_date.asc().nulls_last(), Milestone.title)
    )
    return list((await session.execute(query)).scalars())
