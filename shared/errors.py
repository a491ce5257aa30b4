"""One error hierarchy for every service; the HTTP layer renders them as ``{error, detail}``."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code = 500
    error = "internal_error"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class ConfigurationError(AppError):
    status_code = 500
    error = "configuration_error"


class BadRequest(AppError):
    status_code = 400
    error = "bad_request"


GET_A_KEY = "an admin makes one with `recforge keys create` or POST /api/v1/keys"
NO_KEY = f"no API key: send the header `Authorization: Bearer <key>` ({GET_A_KEY})"
UNKNOWN_KEY = (
    f"this API key is not known: send `Authorization: Bearer <key>` with a key that exists ({GET_A_KEY})"
)


class Unauthorized(AppError):
    """401. Without a message: the request carried no bearer key at all."""

    status_code = 401
    error = "unauthorized"

    def __init__(self, message: str = NO_KEY, **kwargs: Any):
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(AppError):
    status_code = 403
    error = "forbidden"


class NotFound(AppError):
    status_code = 404
    error = "not_found"


class Conflict(AppError):
    status_code = 409
    error = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    error = "unsupported_media_type"


class ValidationFailed(AppError):
    status_code = 422
    error = "validation_error"


class TooManyRequests(AppError):
    status_code = 429
    error = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: Any):
        kwargs.setdefault("headers", {"Retry-After": str(max(1, round(retry_after)))})
        super().__init__(message, **kwargs)


class ServiceUnavailable(AppError):
    status_code = 503
    error = "service_unavailable"
