"""Where a request's time goes, per stage, answered in a `Server-Timing` header (W3C Server Timing).

``ServerTiming`` (ASGI middleware) starts a ``Stages`` for each request to the model routes and keeps it
in a context variable; the handler and the code it calls add their stages (``stage("ann")``,
``add("bm25", seconds)``; the micro-batcher adds a model run's queue wait, tokenization and graph run).
When the response starts, the middleware adds `parse` (from the request's arrival to the handler: the
body read, validation, the key, the admission ceiling's wait), `serialise` (from the handler's end to
the response) and `total`, and writes the header, so a client sees what the server did and what the
network and HTTP added (its own clock less `total`). Stages may overlap (a hybrid search's `bm25` runs
in a thread beside the query's embedding), so they can add up to more than `total`. Cheap: a few
clock reads per request."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_current: ContextVar[Stages | None] = ContextVar("recforge_stages", default=None)


class Stages:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.handler_started: float | None = None
        self.handler_ended: float | None = None

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(seconds, 0.0)

    def header(self, now: float) -> str:
        shown = dict(self.seconds)
        if self.handler_started is not None:
            shown["parse"] = self.handler_started - self.started
            if self.handler_ended is not None:
                shown["serialise"] = now - self.handler_ended
        shown["total"] = now - self.started
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in shown.items())


def current() -> Stages | None:
    return _current.get()


def add(name: str, seconds: float) -> None:
    stages = _current.get()
    if stages is not None:
        stages.add(name, seconds)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of the current request (nothing outside a request)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - started)


@contextlib.contextmanager
def handler() -> Iterator[None]:
    """Mark the route handler's start and end: what lies before is `parse`, after it `serialise`."""
    stages = _current.get()
    if stages is not None:
        stages.handler_started = time.perf_counter()
    try:
        yield
    finally:
        if stages is not None:
            stages.handler_ended = time.perf_counter()


class ServerTiming:
    """Adds `Server-Timing` to the answers of ``paths``."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        stages = Stages()
        token = _current.set(stages)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = stages.header(time.perf_counter()).encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", value)]}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _current.reset(token)
