"""Who may call the inference service: a project's service keys (scope `inference`, or `events` for
/events) and admin keys. Keys are checked against Postgres and remembered for a short while, so the
hot path does not wait on the database for every request; a revoked key stops working within
`KEY_CACHE_S`. Unknown tokens are remembered apart from known keys, in a smaller cache of their own, so
a flood of made-up tokens cannot push the keys of real callers out."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.errors import UNKNOWN_KEY, Forbidden, Unauthorized
from shared.models import ApiKey, User
from shared.models.enums import KeyRole
from shared.security import hash_api_key, key_refusal

T = TypeVar("T")

KEY_CACHE_S = 30.0
KEY_CACHE_SIZE = 4096
MISS_CACHE_SIZE = 1024


@dataclass(frozen=True)
class Caller:
    key_id: uuid.UUID
    role: KeyRole
    project_id: uuid.UUID | None
    scopes: frozenset[str]

    def require_service_or_admin(self) -> None:
        """A person's key may not call inference at all: refused before any project is looked up, so
        the answer never says whether a project exists."""
        if self.role not in (KeyRole.admin, KeyRole.service):
            raise Forbidden("use a service key of this project (or an admin key)")

    def sees(self, project_id: uuid.UUID) -> bool:
        """Whether the project exists for this caller: admins see every project, a service key its own.
        Another project answers as one that does not exist, so a key cannot probe for names."""
        return self.role == KeyRole.admin or (self.role == KeyRole.service and self.project_id == project_id)

    def require(self, project_id: uuid.UUID, scope: str) -> None:
        if self.role == KeyRole.admin:
            return
        if self.role != KeyRole.service or self.project_id != project_id:
            raise Forbidden("use a service key of this project (or an admin key)")
        if scope not in self.scopes:
            raise Forbidden(f"this service key lacks the {scope!r} scope")


class KeyChecker:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], secret: str) -> None:
        self._sessionmaker = sessionmaker
        self._secret = secret
        self._known: OrderedDict[str, tuple[float, Caller]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    async def check(self, authorization: str | None) -> Caller:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized()
        digest = hash_api_key(authorization[7:].strip(), self._secret)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and now - known[0] < KEY_CACHE_S:
            return known[1]
        missed = self._unknown.get(digest)
        if missed is not None and now - missed < KEY_CACHE_S:
            raise Unauthorized(UNKNOWN_KEY)
        caller = await self._lookup(digest)
        if caller is None:
            self._known.pop(digest, None)
            _remember(self._unknown, digest, now, MISS_CACHE_SIZE)
            raise Unauthorized(UNKNOWN_KEY)
        self._unknown.pop(digest, None)
        _remember(self._known, digest, (now, caller), KEY_CACHE_SIZE)
        return caller

    async def _lookup(self, digest: str) -> Caller | None:
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    select(ApiKey, User.is_active)
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.key_hash == digest)
                )
            ).first()
        if row is None:
            return None
        key, active = row
        now = datetime.now(UTC)
        if key_refusal(revoked_at=key.revoked_at, expires_at=key.expires_at, user_active=active, now=now):
            return None
        return Caller(key.id, KeyRole(key.role), key.project_id, frozenset(key.scopes or ()))


def _remember(cache: OrderedDict[str, T], key: str, value: T, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
