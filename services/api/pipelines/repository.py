"""Queries of the pipelines domain."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Dataset, DatasetVersion, Deployment, Event, Pipeline, PipelineRun, Task
from shared.models.enums import PipelineStatus, RunStatus, TaskStatus
from shared.models.pipelines import ACTIVE_RUN


async def by_name(session: AsyncSession, project_id: uuid.UUID, name: str) -> Pipeline | None:
    query = select(Pipeline).where(Pipeline.project_id == project_id, Pipeline.name == name)
    return (await session.execute(query)).scalar_one_or_none()


async def list_pipelines(session: AsyncSession, project_id: uuid.UUID) -> list[Pipeline]:
    query = select(Pipeline).where(Pipeline.project_id == project_id).order_by(Pipeline.created_at)
    return list((await session.execute(query)).scalars())


async def active_pipelines(session: AsyncSession) -> list[Pipeline]:
    query = select(Pipeline).where(Pipeline.status == PipelineStatus.active.value)
    return list((await session.execute(query)).scalars())


async def lock_pipeline(session: AsyncSession, pipeline_id: uuid.UUID) -> Pipeline | None:
    query = select(Pipeline).where(Pipeline.id == pipeline_id).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def dataset_by_name(session: AsyncSession, project_id: uuid.UUID, name: str) -> Dataset | None:
    query = select(Dataset).where(Dataset.project_id == project_id, Dataset.name == name)
    return (await session.execute(query)).scalar_one_or_none()


async def latest_version(session: AsyncSession, dataset_id: uuid.UUID) -> DatasetVersion | None:
    query = (
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def going_run(session: AsyncSession, pipeline_id: uuid.UUID) -> PipelineRun | None:
    query = select(PipelineRun).where(
        PipelineRun.pipeline_id == pipeline_id, PipelineRun.status.in_(ACTIVE_RUN)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def last_run(session: AsyncSession, pipeline_id: uuid.UUID) -> PipelineRun | None:
    query = (
        select(PipelineRun)
        .where(PipelineRun.pipeline_id == pipeline_id, PipelineRun.status != RunStatus.skipped.value)
        .order_by(PipelineRun.number.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def has_key(session: AsyncSession, pipeline_id: uuid.UUID, key: str) -> bool:
    query = select(PipelineRun.id).where(
        PipelineRun.pipeline_id == pipeline_id, PipelineRun.trigger_key == key
    )
    return (await session.execute(query)).first() is not None


async def next_number(session: AsyncSession, pipeline_id: uuid.UUID) -> int:
    query = select(func.coalesce(func.max(PipelineRun.number), 0)).where(
        PipelineRun.pipeline_id == pipeline_id
    )
    return int((await session.execute(query)).scalar_one()) + 1


async def going_run_ids(session: AsyncSession) -> list[uuid.UUID]:
    query = select(PipelineRun.id).where(PipelineRun.status.in_(ACTIVE_RUN)).order_by(PipelineRun.created_at)
    return list((await session.execute(query)).scalars())


async def lock_run_nowait(session: AsyncSession, run_id: uuid.UUID) -> PipelineRun | None:
    """The run, locked for this transaction; None when another controller holds it (or it is gone)."""
    query = select(PipelineRun).where(PipelineRun.id == run_id).with_for_update(skip_locked=True)
    return (await session.execute(query)).scalar_one_or_none()


async def list_runs(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    pipeline_id: uuid.UUID | None,
    statuses: list[str] | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[PipelineRun]:
    query = select(PipelineRun).where(PipelineRun.project_id == project_id)
    if pipeline_id is not None:
        query = query.where(PipelineRun.pipeline_id == pipeline_id)
    if statuses:
        query = query.where(PipelineRun.status.in_(statuses))
    if before is not None:
        query = query.where(
            (PipelineRun.created_at < before[0])
            | ((PipelineRun.created_at == before[0]) & (PipelineRun.id < before[1]))
        )
    query = query.order_by(PipelineRun.created_at.desc(), PipelineRun.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def events_since(session: AsyncSession, project_id: uuid.UUID, since: dt.datetime) -> int:
    """Clicks, carts and purchases received since ``since`` (their own times, skewed by at most a day,
    narrow the scan through the index on occurred_at)."""
    query = select(func.count()).where(
        Event.project_id == project_id,
        Event.occurred_at >= since - dt.timedelta(days=1),
        Event.received_at >= since,
        Event.event_type.in_(("click", "cart", "purchase")),
    )
    return int((await session.execute(query)).scalar_one())


async def active_deployment(session: AsyncSession, project_id: uuid.UUID, role: str) -> Deployment | None:
    query = select(Deployment).where(
        Deployment.project_id == project_id, Deployment.role == role, Deployment.is_active.is_(True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def in_production_since(
    session: AsyncSession, project_id: uuid.UUID, role: str, version_id: uuid.UUID
) -> dt.datetime | None:
    """When the version began serving all of the role's traffic, in its present spell."""
    query = text(
        "SELECT min(created_at) FROM deployments WHERE project_id = :project AND role = :role"
        " AND model_version_id = :version AND canary_model_version_id IS NULL"
        " AND created_at > coalesce((SELECT max(created_at) FROM deployments WHERE project_id = :project"
        " AND role = :role AND model_version_id <> :version), '-infinity')"
    )
    found = await session.execute(query, {"project": project_id, "role": role, "version": version_id})
    return found.scalar_one_or_none()


async def least_loaded_member(
    session: AsyncSession, project_id: uuid.UUID, roles: tuple[str, ...]
) -> uuid.UUID | None:
    """The member of one of ``roles`` with the least open estimated work (tasks not done; a task without
    an estimate counts one hour), the earliest member first on a tie."""
    query = text(
        "SELECT m.user_id FROM project_members m JOIN users u ON u.id = m.user_id"
        " LEFT JOIN tasks t ON t.project_id = m.project_id AND t.assignee_id = m.user_id"
        " AND t.status <> :done"
        " WHERE m.project_id = :project AND m.role = ANY(:roles) AND u.is_active"
        " GROUP BY m.user_id, m.created_at"
        " ORDER BY coalesce(sum(coalesce(t.estimate_hours, 1)), 0), m.created_at, m.user_id LIMIT 1"
    )
    found = await session.execute(
        query, {"project": project_id, "roles": list(roles), "done": TaskStatus.done.value}
    )
    return found.scalar_one_or_none()


async def get_task(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    return await session.get(Task, task_id)
