"""Issuing API keys (the CLI bootstrap and, later, the keys endpoint share this)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import record
from services.api.auth import repository
from shared.errors import ValidationFailed
from shared.models import ApiKey, User
from shared.models.enums import KeyRole
from shared.security import generate_api_key


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKey
    key: str  # the secret, returned once


async def ensure_user(session: AsyncSession, *, name: str, email: str) -> User:
    user = await repository.get_user_by_email(session, email)
    return user or await repository.add_user(session, name=name, email=email)


async def issue_key(
    session: AsyncSession,
    *,
    user: User,
    secret: str,
    name: str,
    role: KeyRole,
    project_id: uuid.UUID | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    actor_user_id: uuid.UUID | None = None,
    actor_key_id: uuid.UUID | None = None,
) -> IssuedKey:
    if role == KeyRole.service and project_id is None:
        raise ValidationFailed("a service key must be scoped to a project", detail=[{"loc": ["project_id"]}])
    if role == KeyRole.admin and project_id is not None:
        raise ValidationFailed("an admin key is global: omit the project", detail=[{"loc": ["project_id"]}])
    new = generate_api_key(secret)
    key = await repository.add_key(
        session,
        ApiKey(
            user_id=user.id,
            name=name,
            role=role.value,
            project_id=project_id,
            scopes=scopes or [],
            key_prefix=new.prefix,
            key_hash=new.digest,
            expires_at=expires_at,
        ),
    )
    await record(
        session,
        action="api_key.create",
        entity_type="api_key",
        entity_id=key.id,
        actor_user_id=actor_user_id,
        actor_key_id=actor_key_id,
        project_id=project_id,
        after={"name": name, "role": role.value, "user_id": str(user.id), "prefix": new.prefix},
    )
    return IssuedKey(record=key, key=new.key)
