"""Users and API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from services.api.auth import repository, service
from services.api.auth.schemas import KeyCreate, KeyCreated, KeyRead, UserCreate, UserRead
from services.api.context import CurrentAdmin, CurrentPerson
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page, decode_id_cursor, encode_cursor
from shared.errors import Forbidden, NotFound

router = APIRouter()


@router.post(
    "/users", tags=["users"], status_code=status.HTTP_201_CREATED, response_model=UserRead, responses=ERRORS
)
async def create_user(data: UserCreate, session: SessionDep, principal: CurrentAdmin) -> UserRead:
    """Create a user (admins). Give them a key with `POST /api/v1/keys`."""
    user = await service.create_user(session, principal, name=data.name, email=str(data.email))
    return UserRead.model_validate(user)


@router.get("/users", tags=["users"], response_model=Page[UserRead], responses=ERRORS)
async def list_users(
    session: SessionDep, principal: CurrentAdmin, cursor: CursorQuery = None, limit: LimitQuery = 50
) -> Page[UserRead]:
    rows = await repository.list_users(session, after=decode_id_cursor(cursor), limit=limit + 1)
    next_cursor = encode_cursor([str(rows[limit - 1].id)]) if len(rows) > limit else None
    return Page(items=[UserRead.model_validate(u) for u in rows[:limit]], next_cursor=next_cursor)


@router.get("/users/me", tags=["users"], response_model=UserRead, responses=ERRORS)
async def me(session: SessionDep, principal: CurrentPerson) -> UserRead:
    user = await repository.get_user(session, principal.user_id)
    return UserRead.model_validate(user)


@router.get("/users/{user_id}", tags=["users"], response_model=UserRead, responses=ERRORS)
async def get_user(user_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> UserRead:
    if user_id != principal.user_id and not principal.is_admin:
        raise NotFound("user not found")
    user = await repository.get_user(session, user_id)
    if user is None:
        raise NotFound("user not found")
    return UserRead.model_validate(user)


@router.post(
    "/keys", tags=["keys"], status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses=ERRORS
)
async def create_key(
    data: KeyCreate, session: SessionDep, principal: CurrentPerson, resources: ResourcesDep
) -> KeyCreated:
    """Create a key; the secret `key` is in this response only."""
    issued = await service.create_key(
        session, principal, data, resources.settings.secret_key.get_secret_value()
    )
    return KeyCreated(**KeyRead.model_validate(issued.record).model_dump(), key=issued.key)


@router.get("/keys", tags=["keys"], response_model=Page[KeyRead], responses=ERRORS)
async def list_keys(
    session: SessionDep,
    principal: CurrentPerson,
    user_id: Annotated[uuid.UUID | None, Query(description="Admins: another user's keys.")] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[KeyRead]:
    """The caller's keys (admins: anyone's, or all). Secrets are never shown again."""
    if user_id is not None and user_id != principal.user_id and not principal.is_admin:
        raise Forbidden("only admins may list other users' keys")
    owner = user_id if principal.is_admin else principal.user_id
    rows = await repository.list_keys(session, user_id=owner, after=decode_id_cursor(cursor), limit=limit + 1)
    next_cursor = encode_cursor([str(rows[limit - 1].id)]) if len(rows) > limit else None
    return Page(items=[KeyRead.model_validate(k) for k in rows[:limit]], next_cursor=next_cursor)


@router.delete("/keys/{key_id}", tags=["keys"], status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def revoke_key(key_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> Response:
    """Revoke a key at once. Idempotent."""
    key = await repository.get_key(session, key_id)
    if key is None or (key.user_id != principal.user_id and not principal.is_admin):
        raise NotFound("key not found")
    await service.revoke_key(session, key, actor_user_id=principal.user_id, actor_key_id=principal.key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
