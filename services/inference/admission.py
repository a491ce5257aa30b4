"""What a request must pass before the service reads its body: a ceiling on requests in flight per
process (beyond it, 429 at once, so a burst cannot pile up work and memory without bound), then the
caller's key (401/403 unread). Health, readiness and metrics are never refused by the ceiling."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import AppError
from shared.http import send_error

EXEMPT = ("/healthz", "/readyz", "/metrics")
CALLER = "recforge.caller"  # the scope key KeyFirst leaves the checked caller under


class InFlightLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            body = json.dumps(
                {"error": "overloaded", "message": f"{self.in_flight} requests in flight; retry shortly"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", b"1"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class KeyFirst:
    """Checks the caller's key of the ``paths`` (the POST endpoints) before their body is read, so a
    caller without a valid key costs a header lookup and, once per key a while, a database read, but
    never a body. The caller is left in the request's scope (``CALLER``) for the route: never in the
    lifespan state, which requests may share."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            resources = scope["state"]["resources"]
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            try:
                scope[CALLER] = await resources.keys.check(authorization or None)
            except AppError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)
