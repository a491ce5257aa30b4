"""Opaque cursors for keyset pagination, and the page envelope every list returns."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from shared.errors import ValidationFailed

T = TypeVar("T")

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50

LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size (at most {MAX_PAGE_SIZE}).")
]
CursorQuery = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def invalid_cursor() -> ValidationFailed:
    return ValidationFailed("invalid cursor", detail=[{"loc": ["query", "cursor"], "msg": "not a cursor"}])


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_cursor() from exc
    if not isinstance(values, list) or len(values) != size:
        raise invalid_cursor()
    return values


def decode_int_cursor(cursor: str | None) -> int | None:
    """Cursor of lists ordered by an integer (version numbers, audit ids)."""
    if not cursor:
        return None
    (value,) = decode_cursor(cursor, 1)
    # what a BIGINT holds (a crafted cursor past it would reach the database and fail there)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise invalid_cursor()
    return value


def decode_id_cursor(cursor: str | None) -> uuid.UUID | None:
    """Cursor of lists ordered by id."""
    if not cursor:
        return None
    (value,) = decode_cursor(cursor, 1)
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise invalid_cursor() from None


def decode_time_cursor(cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    """Cursor of lists ordered by (created_at, id)."""
    if not cursor:
        return None
    created, ident = decode_cursor(cursor, 2)
    try:
        return dt.datetime.fromisoformat(created), uuid.UUID(ident)
    except (TypeError, ValueError):
        raise invalid_cursor() from None


def time_cursor(created_at: dt.datetime, ident: uuid.UUID) -> str:
    return encode_cursor([created_at.isoformat(), str(ident)])
