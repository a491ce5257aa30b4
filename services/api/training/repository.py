from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Dataset, DatasetVersion, ModelVersion, TrainingJob
from shared.models.enums import JobStatus

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> TrainingJob | None:
    return await session.get(TrainingJob, job_id)


async def by_idempotency_key(session: AsyncSession, project_id: uuid.UUID, key: str) -> TrainingJob | None:
    query = select(TrainingJob).where(
        TrainingJob.project_id == project_id, TrainingJob.idempotency_key == key
    )
    return (await session.execute(query)).scalar_one_or_none()


async def reserved_hours(session: AsyncSession, project_id: uuid.UUID) -> float:
    """Compute still held by the project's queued and running jobs (their cap less what they used)."""
    remaining = func.greatest(TrainingJob.compute_limit_hours - TrainingJob.compute_seconds / 3600.0, 0)
    query = select(func.coalesce(func.sum(remaining), 0.0)).where(
        TrainingJob.project_id == project_id, TrainingJob.status.in_(ACTIVE)
    )
    return float((await session.execute(query)).scalar_one())


async def dataset_version_in_project(
    session: AsyncSession, version_id: uuid.UUID, project_id: uuid.UUID
) -> tuple[DatasetVersion, Dataset] | None:
    query = (
        select(DatasetVersion, Dataset)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.id == version_id, Dataset.project_id == project_id)
    )
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row else None


async def model_version_in_project(
    session: AsyncSession, version_id: uuid.UUID, project_id: uuid.UUID
) -> ModelVersion | None:
    query = select(ModelVersion).where(ModelVersion.id == version_id, ModelVersion.project_id == project_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_jobs(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    statuses: list[str] | None,
    job_type: str | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[TrainingJob]:
    query = select(TrainingJob).where(TrainingJob.project_id == project_id)
    if statuses:
        query = query.where(TrainingJob.status.in_(statuses))
    if job_type:
        query = query.where(TrainingJob.job_type == job_type)
    if after is not None:
        query = query.where(
            or_(
                TrainingJob.created_at < after[0],
                and_(TrainingJob.created_at == after[0], TrainingJob.id < after[1]),
            )
        )
    query = query.order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def outputs(session: AsyncSession, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    if not job_ids:
        return {}
    query = (
        select(ModelVersion.training_job_id, ModelVersion.id)
        .where(ModelVersion.training_job_id.in_(job_ids))
        .order_by(ModelVersion.version)
    )
    found: dict[uuid.UUID, list[uuid.UUID]] = {}
    for job_id, version_id in (await session.execute(query)).all():
        found.setdefault(job_id, []).append(version_id)
    return found


async def list_model_versions(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    task_type: str | None,
    status: str | None,
    before: int | None,
    limit: int,
) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.project_id == project_id)
    if task_type:
        query = query.where(ModelVersion.task_type == task_type)
    if status:
        query = query.where(ModelVersion.status == status)
    if before is not None:
        query = query.where(ModelVersion.version < before)
    query = query.order_by(ModelVersion.version.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())
