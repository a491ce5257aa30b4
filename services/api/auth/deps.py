"""Who is calling: the bearer key resolved to a principal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.auth import service
from services.api.deps import ResourcesDep, SessionDep
from shared.errors import Forbidden, Unauthorized
from shared.models.enums import KeyRole

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer rf_...`")


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    user_id: uuid.UUID
    role: KeyRole
    project_id: uuid.UUID | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    request_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == KeyRole.admin

    @property
    def is_service(self) -> bool:
        return self.role == KeyRole.service


async def get_principal(
    request: Request,
    session: SessionDep,
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized()
    key = await service.authenticate(
        session, credentials.credentials, resources.settings.secret_key.get_secret_value()
    )
    return Principal(
        key_id=key.id,
        user_id=key.user_id,
        role=KeyRole(key.role),
        project_id=key.project_id,
        scopes=frozenset(key.scopes),
        request_id=getattr(request.state, "request_id", None),
    )


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_person(principal: CurrentPrincipal) -> Principal:
    """A person's key (admin or user): service keys only reach the endpoints of their scopes."""
    if principal.is_service:
        raise Forbidden("service keys may only call the endpoints of their scopes")
    return principal


CurrentPerson = Annotated[Principal, Depends(get_person)]


async def get_admin(principal: CurrentPerson) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


CurrentAdmin = Annotated[Principal, Depends(get_admin)]
