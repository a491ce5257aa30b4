from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, ConsoleSession, Dataset, DatasetVersion, ModelVersion, TrainingJob, User


async def add_session(
    session: AsyncSession, *, api_key_id: uuid.UUID, token_hash: str, csrf_token: str, expires_at: dt.datetime
) -> ConsoleSession:
    row = ConsoleSession(
        api_key_id=api_key_id, token_hash=token_hash, csrf_token=csrf_token, expires_at=expires_at
    )
    session.add(row)
    await session.flush()
    return row


async def find_session(session: AsyncSession, token_hash: str) -> tuple[ConsoleSession, ApiKey, User] | None:
    row = (
        await session.execute(
            select(ConsoleSession, ApiKey, User)
            .join(ApiKey, ApiKey.id == ConsoleSession.api_key_id)
            .join(User, User.id == ApiKey.user_id)
            .where(ConsoleSession.token_hash == token_hash)
        )
    ).first()
    return (row[0], row[1], row[2]) if row else None


async def end_session(session: AsyncSession, token_hash: str) -> None:
    await session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash))


async def sweep_expired(session: AsyncSession, now: dt.datetime) -> None:
    await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))


async def user_names(session: AsyncSession, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(select(User.id, User.name).where(User.id.in_(wanted)))
    return {user_id: name for user_id, name in rows.tuples()}


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return (
        await session.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()


async def compute_spent(session: AsyncSession, project_id: uuid.UUID) -> list[tuple[dt.datetime, str, float]]:
    """(when, device, hours) of every job that used compute: the budget burn, oldest first. A job
    still running counts what it has used so far, at its last heartbeat."""
    when = func.coalesce(TrainingJob.finished_at, TrainingJob.heartbeat_at, TrainingJob.started_at)
    rows = await session.execute(
        select(when, func.coalesce(TrainingJob.device, "cpu"), TrainingJob.compute_seconds / 3600.0)
        .where(TrainingJob.project_id == project_id, TrainingJob.compute_seconds > 0, when.is_not(None))
        .order_by(when)
    )
    return [(at, device, float(hours)) for at, device, hours in rows.tuples()]


async def version_numbers(session: AsyncSession, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, int]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(wanted))
    )
    return {version_id: number for version_id, number in rows.tuples()}


async def dataset_version_names(
    session: AsyncSession, ids: Iterable[uuid.UUID | None]
) -> dict[uuid.UUID, str]:
    """Each dataset version as people name it: "labels v2"."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(DatasetVersion.id, Dataset.name, DatasetVersion.version)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.id.in_(wanted))
    )
    return {version_id: f"{name} v{number}" for version_id, name, number in rows.tuples()}
