"""Pieces of request/response schemas more than one domain uses."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel


def jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def snapshot(obj: object, fields: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The audit log's before/after view of a row."""
    return {name: jsonable(getattr(obj, name)) for name in fields}


def reject_nulls(model: BaseModel, names: tuple[str, ...]) -> None:
    """PATCH bodies may omit a field, but may not null one the row requires."""
    for name in names:
        if name in model.model_fields_set and getattr(model, name) is None:
            raise ValueError(f"{name} cannot be null")
