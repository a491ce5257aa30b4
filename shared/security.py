"""API keys: high-entropy random tokens, stored as HMAC-SHA-256 digests, shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

KEY_PREFIX = "rf_"


@dataclass(frozen=True)
class NewKey:
    key: str  # the secret; never stored
    prefix: str  # shown in listings so people can tell keys apart
    digest: str  # what the database keeps


def generate_api_key(secret: str) -> NewKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits of entropy
    return NewKey(key=key, prefix=key[:10], digest=hash_api_key(key, secret))


def hash_api_key(key: str, secret: str) -> str:
    # A fast keyed hash is right here: the keys are random 256-bit tokens, not guessable passwords.
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_refusal(
    *, revoked_at: datetime | None, expires_at: datetime | None, user_active: bool, now: datetime
) -> str | None:
    """Why a known key may not be used now, or None when it may."""
    if revoked_at is not None:
        return "this API key was revoked"
    if expires_at is not None and expires_at <= now:
        return "this API key has expired"
    if not user_active:
        return "this API key's user is deactivated"
    return None
