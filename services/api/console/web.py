"""What every console page shares: templates, the signed-in person (from the session cookie), CSRF
checks on every form, flash messages across a redirect, security headers, and errors as pages."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import urllib.parse
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.console import service
from services.api.console.service import SignedIn
from services.api.deps import ResourcesDep, SessionDep
from shared.errors import AppError, Forbidden

log = logging.getLogger("recforge.api.console")

PREFIX = "/ui"
COOKIE = "recforge_session"
LOGIN_COOKIE = "recforge_login"  # the sign-in form's own CSRF token (double submit)
FLASH = "recforge_flash"
CSRF_REFUSED = "this form's security token is missing or out of date: reload the page and try again"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _when(value: dt.datetime | dt.date | None) -> str:
    if not isinstance(value, dt.date):
        return "—"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _short(value: Any, limit: int = 80) -> str:
    """A value of a JSON column, in a table cell."""
    if value is None or isinstance(value, Undefined):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float | None) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {secs} s" if minutes else f"{secs} s")


def _num(value: Any) -> str:
    """A metric: whole numbers (counts) without decimals, rates to four places."""
    if not isinstance(value, int | float):
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 2 else f"{value:.4f}"


templates.env.filters.update(when=_when, short=_short, duration=_duration, num=_num)

# No script, style or frame from anywhere but RecForge itself; inline SVG charts need no more.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    def __init__(self, back: str):
        self.back = back


def _secure(request: Request) -> bool:
    settings = request.state.resources.settings
    return bool(settings.console_secure_cookie) or request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=PREFIX, httponly=True, samesite="strict", secure=_secure(request))


def secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def on_error_back_to(request: Request, back: str) -> None:
    """Where the error page of what the route does next links back to. A route simply raises: the
    request's unit of work rolls back (its notices dropped, its undo run) and the error is shown as a
    page with the signed-in person's menu and this link."""
    request.state.console_back = back


async def signed_in(request: Request, session: SessionDep, resources: ResourcesDep) -> SignedIn:
    """The person signed in with this browser; pages without one send it to the sign-in page."""
    found = await service.current(
        session,
        resources.settings,
        request.cookies.get(COOKIE),
        request_id=getattr(request.state, "request_id", None),
    )
    if found is None:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(back if request.method == "GET" else PREFIX + "/")
    request.state.console_user = found  # the error page, should the route fail, shows who is signed in
    return found


User = Annotated[SignedIn, Depends(signed_in)]


async def form_of(request: Request) -> dict[str, str]:
    """The submitted form's text fields (files are read by the routes that take them)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def checked(request: Request, user: User) -> SignedIn:
    """A state-changing request: its CSRF token (form field or X-CSRF-Token header) must be the
    session's. SameSite=Strict cookies already stay home on cross-site requests; this also refuses a
    request forged from a page on the same site."""
    given = request.headers.get("X-CSRF-Token")
    if given is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        given = (await form_of(request)).get("csrf_token")
    if not service.csrf_ok(user.csrf_token, given):
        raise Forbidden(CSRF_REFUSED)
    return user


Poster = Annotated[SignedIn, Depends(checked)]


def render(
    request: Request,
    template: str,
    user: SignedIn | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    flash = request.cookies.get(FLASH)
    message = None
    if flash:
        try:
            message = json.loads(urllib.parse.unquote(flash))
        except ValueError:
            message = None
    response = templates.TemplateResponse(
        request,
        template,
        {"user": user, "csrf": user.csrf_token if user else "", "flash": message, **context},
        status_code=status_code,
    )
    if flash:
        clear_cookie(request, response, FLASH)
    return secured(response)


def redirect(request: Request, to: str, message: str | None = None) -> Response:
    """303 to ``to`` (a console path), carrying ``message`` to the next page."""
    if not to.startswith(PREFIX) or to.startswith("//"):
        to = PREFIX + "/"
    response = RedirectResponse(to, status_code=303)
    if message:
        value = urllib.parse.quote(json.dumps({"kind": "ok", "text": message}))
        set_cookie(request, response, FLASH, value, max_age=60)
    return secured(response)


def back_to(form: dict[str, str], default: str) -> str:
    """Where a form asks to go after it is done: a console path, else ``default``."""
    target = form.get("back", "")
    return target if target.startswith(PREFIX + "/") and not target.startswith("//") else default


def _failed_in(request: Request) -> tuple[SignedIn | None, str]:
    """Who was signed in, and where the failed route's error page links back to."""
    user = getattr(request.state, "console_user", None)
    return user, getattr(request.state, "console_back", PREFIX + "/")


def error_page(request: Request, user: SignedIn | None, exc: AppError, back: str | None = None) -> Response:
    if exc.status_code >= 500:
        log.error("console request failed: %s", exc.message, extra={"path": request.url.path})
    return render(
        request,
        "error.html",
        user,
        status_code=exc.status_code,
        error=exc,
        detail=_detail_lines(exc.detail),
        back=back or PREFIX + "/",
        title=f"{exc.status_code}: {exc.error.replace('_', ' ')}",
    )


def _detail_lines(detail: Any) -> list[str]:
    """A validation error's fields and messages, in words."""
    if isinstance(detail, list):
        lines = []
        for item in detail[:20]:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                where = f"row {item['row']}: " if "row" in item else ""
                lines.append(f"{where}{loc + ': ' if loc else ''}{item['msg']}")
            elif isinstance(item, dict) and "reason" in item:
                lines.append(f"{item.get('file', '')} row {item.get('row', '?')}: {item['reason']}")
        return lines
    if isinstance(detail, dict) and "errors" in detail:
        return _detail_lines(detail["errors"])
    return []


async def _answer(answer: Response | Awaitable[Response]) -> Response:
    return await answer if inspect.isawaitable(answer) else answer


def install(app: FastAPI) -> None:
    """Errors of console pages as pages (the API's stay JSON), and the static files."""
    from fastapi.staticfiles import StaticFiles

    json_app_error = app.exception_handlers[AppError]
    json_http_error = app.exception_handlers[StarletteHTTPException]

    async def app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        if not request.url.path.startswith(PREFIX):
            return await _answer(json_app_error(request, exc))
        user, back = _failed_in(request)
        return error_page(request, user, exc, back)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith(PREFIX) or request.url.path.startswith(PREFIX + "/static"):
            return await _answer(json_http_error(request, exc))
        error = AppError(
            "no such page" if exc.status_code == 404 else str(exc.detail),
        )
        error.status_code = exc.status_code
        error.error = "not_found" if exc.status_code == 404 else "http_error"
        return error_page(request, None, error, back=PREFIX + "/")

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        to = PREFIX + "/login" + ("?" + urllib.parse.urlencode({"next": exc.back}) if exc.back else "")
        return secured(RedirectResponse(to, status_code=303))

    json_database_error = app.exception_handlers.get(sqlalchemy.exc.DBAPIError)

    async def database_error(request: Request, exc: Exception) -> Response:
        assert json_database_error is not None
        answer = await _answer(json_database_error(request, exc))
        if not request.url.path.startswith(PREFIX) or not isinstance(answer, JSONResponse):
            return answer
        body = json.loads(bytes(answer.body))  # text PostgreSQL cannot store (a NUL in a field)
        error = AppError(str(body.get("message", "the request could not be stored")))
        error.status_code, error.error = answer.status_code, str(body.get("error", "invalid"))
        user, back = _failed_in(request)
        return error_page(request, user, error, back)

    if json_database_error is not None:
        app.add_exception_handler(sqlalchemy.exc.DBAPIError, database_error)
    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SignInRequired, sign_in_required)
    app.mount(PREFIX + "/static", StaticFiles(directory=HERE / "static"), name="console-static")
