"""Users and API keys: issuing (the CLI bootstrap and the keys endpoint share this) and revoking.

Checking a key on each request is the request context's work (services.api.context)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change, record
from services.api.auth import repository
from services.api.auth.schemas import KeyCreate
from services.api.auth.scopes import ServiceScope
from services.api.context import Principal, ProjectContext
from services.api.projects import repository as projects_repository
from shared.errors import Conflict, Forbidden, ValidationFailed
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
        raise ValidationFailed(
            "a service key belongs to one project: name it (project_id in the API, --project in "
            "recforge keys create)",
            detail=[{"loc": ["project_id"]}],
        )
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
            # a service key is given every scope unless the caller narrows it
            scopes=scopes or ([scope.value for scope in ServiceScope] if role == KeyRole.service else []),
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


async def revoke_key(
    session: AsyncSession, key: ApiKey, *, actor_user_id: uuid.UUID, actor_key_id: uuid.UUID | None
) -> None:
    if key.revoked_at is not None:
        return
    key.revoked_at = datetime.now(UTC)
    await record(
        session,
        action="api_key.revoke",
        entity_type="api_key",
        entity_id=key.id,
        actor_user_id=actor_user_id,
        actor_key_id=actor_key_id,
        project_id=key.project_id,
        before={"revoked_at": None},
        after={"revoked_at": key.revoked_at.isoformat()},
    )


async def create_user(session: AsyncSession, principal: Principal, *, name: str, email: str) -> User:
    if await repository.get_user_by_email(session, email) is not None:
        raise Conflict(f"a user with email {email.lower()!r} exists")
    user = await repository.add_user(session, name=name, email=email)
    await session.refresh(user)
    await record(
        session,
        action="user.create",
        entity_type="user",
        entity_id=user.id,
        actor_user_id=principal.user_id,
        actor_key_id=principal.key_id,
        after={"name": user.name, "email": user.email},
        request_id=principal.request_id,
    )
    return user


async def create_key(session: AsyncSession, principal: Principal, data: KeyCreate, secret: str) -> IssuedKey:
    """Admins issue any key. Others issue keys for themselves only: user keys, and service keys of
    projects they own or maintain. A key issued by an expiring key expires with it, at the latest."""
    if not principal.is_admin:
        if data.user_id != principal.user_id:
            raise Forbidden("only admins may create keys for other users")
        if data.role == KeyRole.admin:
            raise Forbidden("only admins may create admin keys")
    user = await repository.get_user(session, data.user_id)
    if user is None:
        raise ValidationFailed("unknown user", detail=[{"loc": ["body", "user_id"], "msg": "no such user"}])
    project_id = None
    if data.project_id is not None:
        project = await projects_repository.find_project(session, str(data.project_id))
        role = await projects_repository.member_role(session, project.id, user.id) if project else None
        if project is None or (role is None and not principal.is_admin):
            raise ValidationFailed(
                "unknown project", detail=[{"loc": ["body", "project_id"], "msg": "no such project"}]
            )
        if data.role == KeyRole.service and not principal.is_admin and role not in ("owner", "maintainer"):
            raise Forbidden("service keys are issued by the project's owners and maintainers")
        if data.role == KeyRole.user:
            raise ValidationFailed(
                "user keys act through the user's memberships: omit project_id",
                detail=[{"loc": ["body", "project_id"], "msg": "only for service keys"}],
            )
        project_id = project.id
    if data.scopes is not None and data.role != KeyRole.service:
        raise ValidationFailed("scopes apply to service keys only", detail=[{"loc": ["body", "scopes"]}])
    scopes = [s.value for s in (data.scopes or list(ServiceScope))] if data.role == KeyRole.service else []
    expires_at = data.expires_at
    if principal.expires_at is not None and (expires_at is None or expires_at > principal.expires_at):
        expires_at = principal.expires_at  # a key never outlives the key that issued it
    return await issue_key(
        session,
        user=user,
        secret=secret,
        name=data.name,
        role=data.role,
        project_id=project_id,
        scopes=scopes,
        expires_at=expires_at,
        actor_user_id=principal.user_id,
        actor_key_id=principal.key_id,
    )


async def revoke_service_keys(
    session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID, why: str
) -> int:
    """Revoke the live service keys of the project that belong to the user (those they issued); each
    revocation is audited."""
    revoked = 0
    for key in await repository.live_service_keys(session, ctx.project.id, user_id):
        key.revoked_at = datetime.now(UTC)
        revoked += 1
        await audit_change(
            session,
            ctx,
            "api_key.revoke",
            "api_key",
            key.id,
            {"revoked_at": None},
            {"revoked_at": key.revoked_at.isoformat(), "reason": why},
        )
    return revoked
