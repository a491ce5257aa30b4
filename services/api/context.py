"""Who is calling and which project a request is about: the request context every domain uses.

A bearer key resolves to a ``Principal``; a project reference (id or slug), or a row that belongs to a
project, resolves to a ``ProjectContext`` with the caller's role in it. A project the caller may not
see answers the same 404 as one that does not exist, so a non-member cannot tell the two apart."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.auth import repository as keys_repository
from services.api.deps import ApiResources, ResourcesDep, SessionDep
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action, allows
from shared.db import unit_of_work
from shared.errors import UNKNOWN_KEY, Forbidden, NotFound, Unauthorized
from shared.models import ApiKey, Project
from shared.models.enums import KeyRole, ProjectRole
from shared.security import hash_api_key, key_refusal

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer rf_...`")

# Writing last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_ACTION_WORDS = {
    Action.read: "read this project",
    Action.update_project: "change the project",
    Action.manage_budget: "change the compute budget",
    Action.manage_members: "manage members",
    Action.write_tasks: "create or change tasks",
    Action.delete_tasks: "delete tasks",
    Action.manage_milestones: "manage milestones",
    Action.read_audit: "read the audit log",
    Action.write_datasets: "import datasets",
    Action.run_jobs: "submit, cancel or retry training jobs",
    Action.deploy: "promote model versions",
}


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID | None  # None: the platform acting for the user (a pipeline's owner)
    user_id: uuid.UUID
    role: KeyRole
    project_id: uuid.UUID | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    request_id: str | None = None
    expires_at: datetime | None = None  # the key's: no key it issues outlives it

    @property
    def is_admin(self) -> bool:
        return self.role == KeyRole.admin

    @property
    def is_service(self) -> bool:
        return self.role == KeyRole.service

    @property
    def actor(self) -> dict[str, uuid.UUID | None]:
        """The audit log's actor columns."""
        return {"actor_user_id": self.user_id, "actor_key_id": self.key_id}


@dataclass(frozen=True)
class ProjectContext:
    project: Project
    role: ProjectRole | None  # None: an admin who is not a member
    principal: Principal

    def can(self, action: Action) -> bool:
        return allows(self.role, action, is_admin=self.principal.is_admin)

    def require(self, action: Action) -> None:
        if not self.can(action):
            role = self.role.value if self.role else "none"
            raise Forbidden(f"your role in this project ({role}) may not {_ACTION_WORDS[action]}")

    @property
    def actor(self) -> dict[str, uuid.UUID | None]:
        return self.principal.actor


# -- who is calling ------------------------------------------------------------------------------


async def authenticate(
    session: AsyncSession, key: str, secret: str, request_id: str | None = None
) -> Principal:
    """The principal of a bearer key; 401 for an unknown, revoked or expired key or a deactivated user."""
    found = await keys_repository.get_key_by_hash(session, hash_api_key(key, secret))
    if found is None:
        raise Unauthorized(UNKNOWN_KEY)
    api_key, user = found
    now = datetime.now(UTC)
    refusal = key_refusal(
        revoked_at=api_key.revoked_at, expires_at=api_key.expires_at, user_active=user.is_active, now=now
    )
    if refusal is not None:
        raise Unauthorized(refusal)
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        api_key.last_used_at = now
    return principal_of(api_key, request_id)


def principal_of(api_key: ApiKey, request_id: str | None = None) -> Principal:
    """Who a key speaks for (its refusals checked by the caller)."""
    return Principal(
        key_id=api_key.id,
        user_id=api_key.user_id,
        role=KeyRole(api_key.role),
        project_id=api_key.project_id,
        scopes=frozenset(api_key.scopes),
        request_id=request_id,
        expires_at=api_key.expires_at,
    )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _principal(
    session: AsyncSession,
    request: Request,
    resources: ApiResources,
    credentials: HTTPAuthorizationCredentials | None,
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized()
    return await authenticate(
        session,
        credentials.credentials,
        resources.settings.secret_key.get_secret_value(),
        request_id=getattr(request.state, "request_id", None),
    )


def _person(principal: Principal) -> Principal:
    """A person's key (admin or user): service keys only reach the endpoints of their scopes."""
    if principal.is_service:
        raise Forbidden("service keys may only call the endpoints of their scopes")
    return principal


async def still_valid(session: AsyncSession, principal: Principal) -> str | None:
    """Why the principal's key may no longer be used (revoked, expired, user deactivated), or None: for
    work that outlives the request that authenticated it, such as an event stream."""
    if principal.key_id is None:
        return "no API key"
    found = await keys_repository.get_key_with_user(session, principal.key_id)
    if found is None:
        return "this API key no longer exists"
    key, user = found
    return key_refusal(
        revoked_at=key.revoked_at,
        expires_at=key.expires_at,
        user_active=user.is_active,
        now=datetime.now(UTC),
    )


async def get_principal(
    request: Request, session: SessionDep, resources: ResourcesDep, credentials: Credentials
) -> Principal:
    return await _principal(session, request, resources, credentials)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_person(principal: CurrentPrincipal) -> Principal:
    return _person(principal)


CurrentPerson = Annotated[Principal, Depends(get_person)]


async def get_admin(principal: CurrentPerson) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


CurrentAdmin = Annotated[Principal, Depends(get_admin)]


# -- which project -------------------------------------------------------------------------------


async def load_project_context(session: AsyncSession, principal: Principal, ref: str) -> ProjectContext:
    """The project (by id or slug) and the caller's role in it; 404 when the caller may not see it."""
    project = await projects_repository.find_project(session, ref)
    if project is None:
        raise NotFound("project not found")
    role = await projects_repository.member_role(session, project.id, principal.user_id)
    if role is None and not principal.is_admin:
        raise NotFound("project not found")
    return ProjectContext(project=project, role=ProjectRole(role) if role else None, principal=principal)


async def project_context_of(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, entity: str
) -> ProjectContext:
    """The context of the project a row belongs to. A caller who cannot see that project gets the
    same 404 as for a row that does not exist ("<entity> not found")."""
    try:
        return await load_project_context(session, principal, str(project_id))
    except NotFound:
        raise NotFound(f"{entity} not found") from None


class _InProject(Protocol):
    @property
    def project_id(self) -> uuid.UUID: ...


Row = TypeVar("Row", bound=_InProject)


async def load_entity(
    session: AsyncSession,
    principal: Principal,
    model: type[Row],
    entity_id: uuid.UUID,
    entity: str,
    *,
    for_update: bool = False,
) -> tuple[ProjectContext, Row]:
    """A row of a project-owned table and its project's context: 404 ("<entity> not found") when the
    row does not exist or the caller may not see its project. ``for_update`` locks the row."""
    row = await session.get(model, entity_id, with_for_update=for_update)
    if row is None:
        raise NotFound(f"{entity} not found")
    return await project_context_of(session, principal, row.project_id, entity), row


async def get_project_context(
    session: SessionDep,
    principal: CurrentPerson,
    project_id: Annotated[str, Path(description="The project's id or slug.", max_length=100)],
) -> ProjectContext:
    return await load_project_context(session, principal, project_id)


ProjectDep = Annotated[ProjectContext, Depends(get_project_context)]


async def get_released_project_context(
    request: Request,
    resources: ResourcesDep,
    credentials: Credentials,
    project_id: Annotated[str, Path(description="The project's id or slug.", max_length=100)],
) -> ProjectContext:
    """The project context, checked in a unit of work of its own that ends (and gives its connection
    back to the pool) before the route goes on: for routes that stream a request body or work for long,
    so slow clients cannot hold the pool's connections. The route opens its own units of work."""
    async with unit_of_work(resources.sessionmaker) as session:
        principal = _person(await _principal(session, request, resources, credentials))
        return await load_project_context(session, principal, project_id)


ReleasedProjectDep = Annotated[ProjectContext, Depends(get_released_project_context)]
