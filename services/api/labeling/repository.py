from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import LabelingAssignment, LabelingItem, LabelingQueue, ProjectMember, TrainingJob, User
from shared.models.enums import AssignmentStatus


async def list_queues(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[LabelingQueue]:
    query = select(LabelingQueue).where(LabelingQueue.project_id == project_id)
    if after is not None:
        at, last = after
        query = query.where(
            or_(LabelingQueue.created_at < at, and_(LabelingQueue.created_at == at, LabelingQueue.id < last))
        )
    query = query.order_by(LabelingQueue.created_at.desc(), LabelingQueue.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def job_state(session: AsyncSession, job_id: uuid.UUID | None) -> tuple[str, str | None] | None:
    """The selection job's status and error."""
    if job_id is None:
        return None
    found = await session.execute(
        select(TrainingJob.status, TrainingJob.error).where(TrainingJob.id == job_id)
    )
    row = found.one_or_none()
    return (row[0], row[1]) if row else None


@dataclass
class Counts:
    labelled: int = 0
    skipped: int = 0
    pending: int = 0

    @property
    def assigned(self) -> int:
        return self.labelled + self.skipped + self.pending

    @property
    def done(self) -> int:
        return self.labelled + self.skipped


async def counts(
    session: AsyncSession, queue_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> dict[uuid.UUID, Counts]:
    """Assignments by labeller and status (one labeller's with ``user_id``)."""
    query = (
        select(LabelingAssignment.user_id, LabelingAssignment.status, func.count())
        .where(LabelingAssignment.queue_id == queue_id)
        .group_by(LabelingAssignment.user_id, LabelingAssignment.status)
    )
    if user_id is not None:
        query = query.where(LabelingAssignment.user_id == user_id)
    out: dict[uuid.UUID, Counts] = {}
    for user, status, count in await session.execute(query):
        setattr(out.setdefault(user, Counts()), status, int(count))
    return out


async def item_count(session: AsyncSession, queue_id: uuid.UUID) -> int:
    query = select(func.count()).select_from(LabelingItem).where(LabelingItem.queue_id == queue_id)
    return int((await session.execute(query)).scalar_one())


async def names(session: AsyncSession, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not user_ids:
        return {}
    found = await session.execute(select(User.id, User.name).where(User.id.in_(user_ids)))
    return {user: name for user, name in found}


async def member_roles(
    session: AsyncSession, project_id: uuid.UUID, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    found = await session.execute(
        select(ProjectMember.user_id, ProjectMember.role).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id.in_(user_ids)
        )
    )
    return {user: role for user, role in found}


async def next_assignment(
    session: AsyncSession, queue_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[LabelingAssignment, LabelingItem] | None:
    """The labeller's first pair still waiting, in the strategy's order."""
    query = (
        select(LabelingAssignment, LabelingItem)
        .join(LabelingItem, LabelingItem.id == LabelingAssignment.item_id)
        .where(
            LabelingAssignment.queue_id == queue_id,
            LabelingAssignment.user_id == user_id,
            LabelingAssignment.status == AssignmentStatus.pending.value,
        )
        .order_by(LabelingAssignment.position)
        .limit(1)
    )
    row = (await session.execute(query)).one_or_none()
    return (row[0], row[1]) if row else None


async def assignment(
    session: AsyncSession, queue_id: uuid.UUID, item_id: uuid.UUID, user_id: uuid.UUID
) -> LabelingAssignment | None:
    query = (
        select(LabelingAssignment)
        .where(
            LabelingAssignment.queue_id == queue_id,
            LabelingAssignment.item_id == item_id,
            LabelingAssignment.user_id == user_id,
        )
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def item_in_queue(session: AsyncSession, queue_id: uuid.UUID, item_id: uuid.UUID) -> bool:
    query = select(LabelingItem.id).where(LabelingItem.id == item_id, LabelingItem.queue_id == queue_id)
    return (await session.execute(query)).scalar_one_or_none() is not None


@dataclass(frozen=True)
class Answer:
    item_id: uuid.UUID
    query: str
    product_id: str
    user_id: uuid.UUID
    status: str
    grade: int | None


async def answers(session: AsyncSession, queue_id: uuid.UUID) -> list[Answer]:
    """Every labelled or skipped assignment of the queue, with its pair."""
    query = (
        select(
            LabelingItem.id,
            LabelingItem.query,
            LabelingItem.product_id,
            LabelingAssignment.user_id,
            LabelingAssignment.status,
            LabelingAssignment.grade,
        )
        .join(LabelingItem, LabelingItem.id == LabelingAssignment.item_id)
        .where(
            LabelingAssignment.queue_id == queue_id,
            LabelingAssignment.status != AssignmentStatus.pending.value,
        )
        .order_by(LabelingItem.position, LabelingAssignment.user_id)
    )
    return [Answer(*row) for row in await session.execute(query)]
