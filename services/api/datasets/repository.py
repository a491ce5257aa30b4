from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Dataset, DatasetImport, DatasetVersion, ModelVersion, TrainingJob


async def find_dataset(session: AsyncSession, project_id: uuid.UUID, name: str) -> Dataset | None:
    query = select(Dataset).where(Dataset.project_id == project_id, Dataset.name == name)
    return (await session.execute(query)).scalar_one_or_none()


async def ensure_dataset(session: AsyncSession, values: dict[str, object]) -> tuple[Dataset, bool]:
    """The project's dataset of that name, created if missing (safe under concurrent imports),
    locked for the rest of the transaction so version numbers are handed out one at a time."""
    inserted = await session.execute(
        insert(Dataset)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["project_id", "name"])
        .returning(Dataset.id)
    )
    created = inserted.scalar_one_or_none() is not None
    query = (
        select(Dataset)
        .where(Dataset.project_id == values["project_id"], Dataset.name == values["name"])
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one(), created


async def version_by_hash(
    session: AsyncSession, dataset_id: uuid.UUID, content_hash: str
) -> DatasetVersion | None:
    query = select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset_id, DatasetVersion.content_hash == content_hash
    )
    return (await session.execute(query)).scalar_one_or_none()


async def next_version_number(session: AsyncSession, dataset_id: uuid.UUID) -> int:
    query = select(func.coalesce(func.max(DatasetVersion.version), 0)).where(
        DatasetVersion.dataset_id == dataset_id
    )
    return int((await session.execute(query)).scalar_one()) + 1


async def version_with_project(
    session: AsyncSession, version_id: uuid.UUID
) -> tuple[DatasetVersion, uuid.UUID] | None:
    """A dataset version and the id of the project its dataset belongs to."""
    query = (
        select(DatasetVersion, Dataset.project_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.id == version_id)
    )
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row else None


async def list_datasets(
    session: AsyncSession, project_id: uuid.UUID, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[Dataset]:
    query = select(Dataset).where(Dataset.project_id == project_id)
    if after is not None:
        query = query.where(
            or_(Dataset.created_at < after[0], and_(Dataset.created_at == after[0], Dataset.id < after[1]))
        )
    query = query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def version_summaries(
    session: AsyncSession, dataset_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, DatasetVersion]]:
    """Per dataset: how many versions, and the newest."""
    if not dataset_ids:
        return {}
    counts = (
        select(
            DatasetVersion.dataset_id, func.count().label("n"), func.max(DatasetVersion.version).label("top")
        )
        .where(DatasetVersion.dataset_id.in_(dataset_ids))
        .group_by(DatasetVersion.dataset_id)
        .subquery()
    )
    query = select(counts.c.n, DatasetVersion).join(
        DatasetVersion,
        and_(DatasetVersion.dataset_id == counts.c.dataset_id, DatasetVersion.version == counts.c.top),
    )
    return {version.dataset_id: (int(n), version) for n, version in (await session.execute(query)).all()}


async def list_versions(
    session: AsyncSession, dataset_id: uuid.UUID, *, before: int | None, limit: int
) -> list[DatasetVersion]:
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
    if before is not None:
        query = query.where(DatasetVersion.version < before)
    query = query.order_by(DatasetVersion.version.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def creating_import(session: AsyncSession, version_id: uuid.UUID) -> DatasetImport | None:
    query = select(DatasetImport).where(
        DatasetImport.dataset_version_id == version_id, DatasetImport.status == "created"
    )
    return (await session.execute(query)).scalars().first()


async def list_imports(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[DatasetImport]:
    query = select(DatasetImport).where(DatasetImport.project_id == project_id)
    if status is not None:
        query = query.where(DatasetImport.status == status)
    if after is not None:
        query = query.where(
            or_(
                DatasetImport.created_at < after[0],
                and_(DatasetImport.created_at == after[0], DatasetImport.id < after[1]),
            )
        )
    query = query.order_by(DatasetImport.created_at.desc(), DatasetImport.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def lineage(
    session: AsyncSession, version_id: uuid.UUID
) -> tuple[list[TrainingJob], list[ModelVersion]]:
    jobs = await session.execute(
        select(TrainingJob)
        .where(TrainingJob.dataset_version_id == version_id)
        .order_by(TrainingJob.created_at)
    )
    job_list = list(jobs.scalars())
    job_ids = [job.id for job in job_list]
    condition = ModelVersion.dataset_version_id == version_id
    if job_ids:
        condition = or_(condition, ModelVersion.training_job_id.in_(job_ids))
    models = await session.execute(select(ModelVersion).where(condition).order_by(ModelVersion.version))
    return job_list, list(models.scalars())
