"""API keys: high-entropy random tokens, stored as HMAC-SHA-256 digests, shown once; and the credentials
RecForge itself uses (a Jira token), sealed under the server's secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


# -- secrets kept for calling others (a Jira API token, a webhook secret) --------------------------


def _fernet(secret: str) -> Any:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"recforge sealed secrets").derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def seal(secret: str, plaintext: str) -> str:
    """``plaintext`` encrypted and authenticated (Fernet: AES-128-CBC + HMAC-SHA256) under a key derived
    from the server's secret (HKDF-SHA256): what the database keeps of a credential RecForge must use."""
    return str(_fernet(secret).encrypt(plaintext.encode()).decode())


def unseal(secret: str, sealed: str) -> str:
    """The plaintext of ``seal``; raises ValueError when the server's secret changed since it was sealed."""
    from cryptography.fernet import InvalidToken

    try:
        return str(_fernet(secret).decrypt(sealed.encode()).decode())
    except InvalidToken:
        raise ValueError(
            "a sealed credential cannot be read: RECFORGE_SECRET_KEY changed since it was stored; "
            "store the credential again"
        ) from None
