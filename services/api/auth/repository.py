from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, User


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.lower()))
    return result.scalar_one_or_none()


async def add_user(session: AsyncSession, *, name: str, email: str) -> User:
    user = User(name=name, email=email.lower())
    session.add(user)
    await session.flush()
    return user


async def add_key(session: AsyncSession, key: ApiKey) -> ApiKey:
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return key


async def get_key_by_hash(session: AsyncSession, digest: str) -> tuple[ApiKey, User] | None:
    row = (
        await session.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == digest)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def get_key_with_user(session: AsyncSession, key_id: uuid.UUID) -> tuple[ApiKey, User] | None:
    row = (
        await session.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.id == key_id)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def list_keys(
    session: AsyncSession, *, user_id: uuid.UUID | None, after: uuid.UUID | None, limit: int
) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id).limit(limit)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if after is not None:
        query = query.where(ApiKey.id > after)
    return list((await session.execute(query)).scalars())


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def list_users(session: AsyncSession, *, after: uuid.UUID | None, limit: int) -> list[User]:
    query = select(User).order_by(User.id).limit(limit)
    if after is not None:
        query = query.where(User.id > after)
    return list((await session.execute(query)).scalars())


async def live_service_keys(session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID) -> list[ApiKey]:
    query = (
        select(ApiKey)
        .where(
            ApiKey.project_id == project_id,
            ApiKey.user_id == user_id,
            ApiKey.role == "service",
            ApiKey.revoked_at.is_(None),
        )
        .with_for_update()
    )
    return list((await session.execute(query)).scalars())
