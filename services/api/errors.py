"""The error responses routes declare in OpenAPI, rendered by shared.http's handlers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    error: str
    message: str
    detail: Any | None = None


def _r(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _r("Missing, invalid, expired or revoked API key"),
    403: _r("The key's role may not do this"),
    404: _r("Not found, or not visible to the caller"),
    409: _r("Conflicts with the current state"),
    422: _r("Invalid input; `detail` lists the failing fields"),
}
