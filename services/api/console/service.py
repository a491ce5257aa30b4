"""Console sign-in: an API key is exchanged once for a random session token (the cookie); only the
token's keyed hash is stored, with the session's CSRF token. Every request re-reads the key, so a key
revoked, expired or whose user was deactivated ends its console sessions at once."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.console import repository
from services.api.context import Principal, authenticate, principal_of
from shared.config import Settings
from shared.errors import Forbidden, Unauthorized
from shared.security import hash_api_key, key_refusal


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    user_name: str
    csrf_token: str
    token: str  # the cookie's value


def _digest(token: str, settings: Settings) -> str:
    return hash_api_key(f"console:{token}", settings.secret_key.get_secret_value())


async def sign_in(session: AsyncSession, settings: Settings, key: str) -> tuple[str, dt.datetime]:
    """A new session for the holder of ``key``: (cookie value, expiry). 401 for a key that may not be
    used; 403 for a service key (they call their scopes' endpoints, not the console)."""
    key = key.strip()
    if not key:
        raise Unauthorized("paste an API key (rf_...): an admin makes one with `recforge keys create`")
    principal = await authenticate(session, key, settings.secret_key.get_secret_value())
    if principal.is_service:
        raise Forbidden("service keys cannot sign in to the console: use a person's key")
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(hours=settings.console_session_hours)
    if principal.expires_at is not None:
        expires = min(expires, principal.expires_at)
    await repository.sweep_expired(session, now)
    token = secrets.token_urlsafe(32)
    assert principal.key_id is not None
    await repository.add_session(
        session,
        api_key_id=principal.key_id,
        token_hash=_digest(token, settings),
        csrf_token=secrets.token_urlsafe(32),
        expires_at=expires,
    )
    return token, expires


async def current(
    session: AsyncSession, settings: Settings, token: str | None, request_id: str | None = None
) -> SignedIn | None:
    """Who holds the session ``token``, or None when there is no such session (signed out, expired)
    or its key may no longer be used."""
    if not token:
        return None
    found = await repository.find_session(session, _digest(token, settings))
    if found is None:
        return None
    row, key, user = found
    now = dt.datetime.now(dt.UTC)
    if row.expires_at <= now or key_refusal(
        revoked_at=key.revoked_at, expires_at=key.expires_at, user_active=user.is_active, now=now
    ):
        return None
    principal = principal_of(key, request_id)
    return SignedIn(principal=principal, user_name=user.name, csrf_token=row.csrf_token, token=token)


async def sign_out(session: AsyncSession, settings: Settings, token: str) -> None:
    await repository.end_session(session, _digest(token, settings))


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
