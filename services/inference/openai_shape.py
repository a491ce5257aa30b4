"""Errors of the OpenAI-compatible routes (``/v1/...``) in OpenAI's shape, so OpenAI's clients show
their message: ``{"error": {"message", "type", "param", "code"}}``. Every error of those routes
passes here, whoever answered it (the admission ceiling, the key check, the body limits, the route),
and is rewritten from RecForge's ``{"error", "message", "detail"}``."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1/"
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
CODES = {404: "model_not_found"}  # the one thing a /v1 route looks up by name is its model


def openai_error(status: int, body: Any) -> dict[str, Any]:
    """RecForge's error body as OpenAI's."""
    ours = body if isinstance(body, dict) else {}
    message = str(ours.get("message") or ours.get("error") or f"HTTP {status}")
    param = None
    detail = ours.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # of a union's errors, the branch whose type matched says what is wrong
        matched = [d for d in detail if isinstance(d, dict) and not str(d.get("type", "")).endswith("_type")]
        first = (matched or detail)[0]
        loc = [str(part) for part in first.get("loc", []) if part != "body" and not _union_tag(part)]
        param = loc[0] if loc else None  # as OpenAI names it: the request's field
        message = f"{message}: {'.'.join(loc) + ': ' if loc else ''}{first.get('msg')}"
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": CODES.get(status, ours.get("error")),
        }
    }


def _union_tag(part: Any) -> bool:
    """Whether a location part names a branch of a union (``list[constrained-str]``), not a field."""
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-"))


class OpenAIErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is whole
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            try:
                body = json.loads(b"".join(chunks))
            except ValueError:
                body = {"message": b"".join(chunks).decode("utf-8", "replace")[:500]}
            rewritten = json.dumps(openai_error(start["status"], body)).encode()
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(rewritten)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": rewritten})

        await self.app(scope, receive, sending)
