"""HTTP pieces every service shares: error rendering, request ids and access logs, health routes."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import AppError, PayloadTooLarge, ServiceUnavailable, ValidationFailed

log = logging.getLogger("recforge.http")

Check = Callable[[], Awaitable[Any]]
ChecksFactory = Callable[[Request], Mapping[str, Check]]
CHECK_TIMEOUT_S = 2.0


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("request failed: %s", exc.message, extra={"path": request.url.path})
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
            for err in exc.errors()
        ]
        body = {"error": "validation_error", "message": "The request is invalid", "detail": errors}
        return JSONResponse(jsonable_encoder(body), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # what the router itself answers (no such path, a method the path does not take), in the
        # shape of every other error
        if exc.status_code == 404:
            error = "not_found"
            message = f"no such path: {request.method} {request.url.path}; the paths are listed at /docs"
        elif exc.status_code == 405:
            error = "method_not_allowed"
            allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed or 'none'}"
        else:
            error, message = f"http_{exc.status_code}", str(exc.detail)
        body = {"error": error, "message": message}
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))

    import sqlalchemy.exc

    @app.exception_handler(sqlalchemy.exc.DBAPIError)
    async def _database_error(request: Request, exc: sqlalchemy.exc.DBAPIError) -> JSONResponse:
        # text check_text cannot see (a form field of an upload) that PostgreSQL refused to store;
        # the unit of work rolled back, so nothing of the request was kept
        if not _unstorable_text(exc):
            raise exc  # an outage (OutageGuard answers 503) or a fault of the code (500)
        refused = _text_error(
            ["request"], "a text in the request holds NUL or an unpaired surrogate; remove it"
        )
        return JSONResponse(refused.to_dict(), status_code=refused.status_code)


async def send_error(send: Send, exc: AppError) -> None:
    """Answer with an AppError's status and body from ASGI middleware (before the app runs)."""
    body = json.dumps(exc.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# JSON escapes of what no text may hold: NUL (PostgreSQL cannot store it) and UTF-16 surrogates (which
# are no characters alone, and which neither UTF-8 nor the tokenizers can encode); a pair is checked
# after decoding. An escaped backslash before one (``\\u0000``) is text, and is skipped by the walk.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BIG_EXPONENT = re.compile(rb"[eE]\+?[0-9]{3}")  # a number that may overflow to infinity when read


def bad_text(value: str) -> str | None:
    """Why ``value`` cannot be taken as text, or None."""
    if "\x00" in value:
        return "text may not contain NUL (\\u0000); remove it"
    if _SURROGATE.search(value):
        return "text may not contain an unpaired UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode"
    return None


def _find_bad_text(value: Any, loc: list[str | int]) -> tuple[list[str | int], str] | None:
    if isinstance(value, str):
        why = bad_text(value)
        return (loc, why) if why else None
    if isinstance(value, float) and not math.isfinite(value):
        return loc, "the number is too large for a JSON number (1.8e308 at most)"
    items: Any = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, item in items:
        if isinstance(key, str) and (why := bad_text(key)):
            return [*loc, key], why
        found = _find_bad_text(item, [*loc, key])
        if found:
            return found
    return None


def _text_error(loc: list[str | int], why: str) -> ValidationFailed:
    return ValidationFailed(
        "The request is invalid", detail=[{"loc": loc, "msg": why, "type": "text_invalid"}]
    )


def _unstorable_text(exc: BaseException) -> bool:
    import asyncpg

    unstorable = asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
    return any(isinstance(cause, unstorable | UnicodeEncodeError) for cause in _chain(exc))


class _NotJsonNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def check_text(scope: Scope, body: bytes) -> ValidationFailed | None:
    """The 422 for a request whose path, query or JSON body holds what no service can take, naming
    where: text with NUL or a lone surrogate, or NaN, Infinity and numbers beyond a double (which
    Python's JSON reader takes, but JSON and PostgreSQL's jsonb do not); None for the rest. A body
    costs a byte scan unless it holds such an escape, word or exponent, when it is decoded to find
    the field."""
    if "\x00" in scope.get("path", ""):
        return _text_error(["path"], "text may not contain NUL (%00); remove it")
    if b"%00" in scope.get("query_string", b""):
        return _text_error(["query"], "text may not contain NUL (%00); remove it")
    suspect = b"NaN" in body or b"Infinity" in body or _BIG_EXPONENT.search(body)
    if not suspect and not _SUSPECT_ESCAPE.search(body):
        return None
    try:
        decoded = json.loads(body, parse_constant=_refuse_constant)
    except _NotJsonNumber as exc:
        return _text_error(["body"], f"{exc} is not a JSON number; send a finite number or null")
    except ValueError:
        return None  # not JSON: the app says what is wrong with it
    found = _find_bad_text(decoded, ["body"])
    return _text_error(*found) if found else None


class BodyLimit:
    """Refuses request bodies larger than ``limit`` bytes with 413 before the app sees any of them: at
    once when Content-Length says so, else as soon as the bytes received pass it. Bodies within the
    limit are read here and handed to the app whole, once ``check_text`` found nothing in them no text
    may hold (422). ``exempt(scope)`` names routes that enforce a limit of their own while they stream
    (dataset uploads); their path and query are checked all the same."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than {self.limit // 1024} KiB (RECFORGE_MAX_BODY_KB)",
            detail={"limit_bytes": self.limit},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.exempt is not None and self.exempt(scope):
            refused = check_text(scope, b"")
            if refused is not None:
                await send_error(send, refused)
                return
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await send_error(send, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await send_error(send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        refused = check_text(scope, body)
        if refused is not None:
            await send_error(send, refused)
            return
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class RequestContextMiddleware:
    """Gives each request an id (kept from ``X-Request-ID`` when sent) and logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = incoming or uuid.uuid4().hex
        # a copy: a server may hand every request the same lifespan state dict, which must not carry
        # one request's id into another's
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            if path not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "%s %s %s",
                    scope.get("method"),
                    path,
                    status,
                    extra={
                        "request_id": request_id,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )


OUTAGE_RETRY_AFTER_S = 5
_CLIENT_LIBRARIES = ("/asyncpg/", "/sqlalchemy/", "/redis/")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return [e for e in seen if isinstance(e, BaseException)]


def _from_client_library(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if any(part in tb.tb_frame.f_code.co_filename for part in _CLIENT_LIBRARIES):
            return True
        tb = tb.tb_next
    return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says PostgreSQL or Redis cannot be reached right now (down, restarting, the
    connection cut, the pool exhausted), as opposed to a fault of the request or of the code."""
    import asyncpg
    import redis.exceptions
    import sqlalchemy.exc

    for cause in _chain(exc):
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(
            cause,
            sqlalchemy.exc.TimeoutError  # no pooled connection came free in time
            | asyncpg.PostgresConnectionError
            | asyncpg.CannotConnectNowError  # the server is starting or shutting down
            | asyncpg.OperatorInterventionError  # the server was told to shut down
            | asyncpg.TooManyConnectionsError
            | asyncpg.exceptions.ConnectionDoesNotExistError  # closed under the query
            | redis.exceptions.ConnectionError
            | redis.exceptions.TimeoutError,
        ):
            return True
        # a socket that refuses, resets or is missing (a server's Unix socket), inside a client
        if isinstance(cause, OSError) and _from_client_library(cause):
            return True
    return False


class OutageGuard:
    """Answers 503 with Retry-After, instead of 500, when a request fails because PostgreSQL or Redis
    cannot be reached: clients retry, and the process itself needs no restart (pools reconnect)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if started or not is_outage(exc):
                raise
            log.warning(
                "a dependency is unreachable: %s",
                f"{type(exc).__name__}: {exc}"[:300],
                extra={"path": scope["path"]},
            )
            await send_error(
                send,
                ServiceUnavailable(
                    "the service cannot reach its database or queue right now; retry shortly",
                    headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
                ),
            )


class NotReady(Exception):
    """A readiness check's own verdict; its message is shown (other failures show their kind only)."""


async def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, Any]]:
    """Run the readiness checks at once. Anyone may ask, so a failure shows its kind, not its text
    (which can hold hosts, paths or another tenant's names); the text goes to the log."""

    async def one(name: str, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except NotReady as exc:
            return {"ok": False, "error": str(exc)[:300]}
        except Exception as exc:  # a readiness probe reports every failure, whatever its kind
            log.warning("readiness check %s failed: %s", name, f"{type(exc).__name__}: {exc}"[:500])
            return {"ok": False, "error": type(exc).__name__}
        result: dict[str, Any] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
        if detail is not None:
            result["detail"] = detail
        return result

    names = list(checks)
    results = await asyncio.gather(*(one(name, checks[name]) for name in names))
    report = dict(zip(names, results, strict=True))
    return all(r["ok"] for r in results), report


def infra_checks(engine: Any, redis: Any) -> dict[str, Check]:
    """Readiness checks every service shares: Postgres and Redis answer."""
    from shared.db import ping_database

    async def postgres() -> None:
        await ping_database(engine)

    async def redis_ping() -> None:
        await redis.ping()

    return {"postgres": postgres, "redis": redis_ping}


def health_router(checks_for: ChecksFactory) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: every dependency answers",
        responses={503: {"description": "A dependency is not ready"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        ok, report = await run_checks(checks_for(request))
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": report}, status_code=200 if ok else 503
        )

    return router


def setup_common(app: FastAPI, checks_for: ChecksFactory) -> None:
    install_error_handlers(app)
    app.add_middleware(OutageGuard)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router(checks_for))
