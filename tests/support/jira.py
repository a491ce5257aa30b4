"""A Jira-compatible test server: the REST v3 endpoints RecForge calls, with the payload shapes of
Atlassian's Jira Cloud platform REST API v3 documentation (issue create/get/edit, transitions, comments,
user search, myself, project, dynamic webhooks), basic auth with an email and an API token, a workflow
whose transition ids differ from their status names, and, on request, HTTP 429 with Retry-After.

It runs in a thread (uvicorn) on a free port; ``send_webhook`` posts a signed `jira:issue_updated` event
the way Jira does (X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body under the webhook secret>)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.support.processes import free_port

# a workflow: the transition into each status, with an id that is not the status's
WORKFLOW = {"To Do": "11", "In Progress": "21", "In Review": "31", "Done": "41", "Blocked": "51"}
CATEGORY = {
    "To Do": "new",
    "In Progress": "indeterminate",
    "In Review": "indeterminate",
    "Done": "done",
    "Blocked": "indeterminate",
}


@dataclass
class JiraState:
    email: str = "bot@shop.example"
    token: str = "jira-api-token-ABC123"
    project_key: str = "SHOP"
    users: list[dict[str, Any]] = field(default_factory=list)
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    throttle: int = 0  # answer this many of the next calls 429 with Retry-After: 0
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(10001))

    def comment_texts(self, key: str) -> list[str]:
        return [
            " ".join(t["text"] for p in c["body"]["content"] for t in p.get("content", []))
            for c in self.comments.get(key, [])
        ]


def _error(status: int, *messages: str) -> JSONResponse:
    return JSONResponse({"errorMessages": list(messages), "errors": {}}, status_code=status)


def make_app(state: JiraState) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def gate(request: Request, call_next: Any) -> Response:
        state.calls.append((request.method, request.url.path))
        if state.throttle > 0:
            state.throttle -= 1
            return JSONResponse(
                {"errorMessages": ["Rate limit exceeded."]}, 429, headers={"Retry-After": "0"}
            )
        header = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{state.email}:{state.token}".encode()).decode()
        if not hmac.compare_digest(header.encode(), expected.encode()):
            return _error(401, "Client must be authenticated to access this resource.")
        response: Response = await call_next(request)
        return response

    def issue_or_404(key: str) -> dict[str, Any] | None:
        return state.issues.get(key) or next((i for i in state.issues.values() if i["id"] == key), None)

    @app.get("/rest/api/3/myself")
    async def myself() -> dict[str, Any]:
        return {
            "accountId": "5b10a2844c20165700ede21g",
            "emailAddress": state.email,
            "displayName": "RecForge bot",
            "active": True,
        }

    @app.get("/rest/api/3/project/{key}")
    async def project(key: str) -> Response:
        if key != state.project_key:
            return _error(404, "No project could be found with key '" + key + "'.")
        return JSONResponse({"id": "10000", "key": key, "name": "Shop search", "projectTypeKey": "software"})

    @app.post("/rest/api/3/issue")
    async def create_issue(request: Request) -> Response:
        fields = (await request.json())["fields"]
        if fields.get("project", {}).get("key") != state.project_key:
            return _error(400, "project: project is required")
        if not fields.get("summary"):
            return JSONResponse(
                {"errorMessages": [], "errors": {"summary": "You must specify a summary of the issue."}}, 400
            )
        number = next(state.ids)
        key = f"{state.project_key}-{len(state.issues) + 1}"
        state.issues[key] = {
            "id": str(number),
            "key": key,
            "self": f"{request.base_url}rest/api/3/issue/{number}",
            "fields": {
                "summary": fields["summary"],
                "description": fields.get("description"),
                "issuetype": {"name": fields.get("issuetype", {}).get("name", "Task")},
                "status": {"name": "To Do", "statusCategory": {"key": CATEGORY["To Do"]}},
                "assignee": None,
            },
        }
        return JSONResponse({"id": str(number), "key": key, "self": state.issues[key]["self"]}, 201)

    @app.get("/rest/api/3/issue/{key}")
    async def get_issue(key: str) -> Response:
        issue = issue_or_404(key)
        return (
            JSONResponse(issue)
            if issue
            else _error(404, "Issue does not exist or you do not have permission to see it.")
        )

    @app.put("/rest/api/3/issue/{key}")
    async def edit_issue(key: str, request: Request) -> Response:
        issue = issue_or_404(key)
        if issue is None:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        fields = (await request.json()).get("fields", {})
        if "summary" in fields:
            issue["fields"]["summary"] = fields["summary"]
        if "assignee" in fields:
            account = (fields["assignee"] or {}).get("accountId")
            user = next((u for u in state.users if u["accountId"] == account), None)
            if account and user is None:
                return JSONResponse({"errorMessages": [], "errors": {"assignee": "User does not exist"}}, 400)
            issue["fields"]["assignee"] = user
        return Response(status_code=204)

    @app.get("/rest/api/3/issue/{key}/transitions")
    async def transitions(key: str) -> Response:
        issue = issue_or_404(key)
        if issue is None:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        current = issue["fields"]["status"]["name"]
        return JSONResponse(
            {
                "expand": "transitions",
                "transitions": [
                    {
                        "id": tid,
                        "name": f"Move to {name}",
                        "to": {
                            "name": name,
                            "id": str(int(tid) * 100),
                            "statusCategory": {"key": CATEGORY[name]},
                        },
                        "hasScreen": False,
                        "isGlobal": True,
                        "isInitial": False,
                        "isConditional": False,
                    }
                    for name, tid in WORKFLOW.items()
                    if name != current
                ],
            }
        )

    @app.post("/rest/api/3/issue/{key}/transitions")
    async def transition(key: str, request: Request) -> Response:
        issue = issue_or_404(key)
        if issue is None:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        wanted = str((await request.json()).get("transition", {}).get("id"))
        target = next((name for name, tid in WORKFLOW.items() if tid == wanted), None)
        if target is None or target == issue["fields"]["status"]["name"]:
            return _error(400, f"Transition id '{wanted}' is not valid for this issue.")
        issue["fields"]["status"] = {"name": target, "statusCategory": {"key": CATEGORY[target]}}
        return Response(status_code=204)

    @app.post("/rest/api/3/issue/{key}/comment")
    async def comment(key: str, request: Request) -> Response:
        issue = issue_or_404(key)
        if issue is None:
            return _error(404, "Issue does not exist or you do not have permission to see it.")
        body = (await request.json())["body"]
        if body.get("type") != "doc":
            return _error(400, "Comment body is not valid!")
        entry = {
            "id": str(next(state.ids)),
            "body": body,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        }
        state.comments.setdefault(issue["key"], []).append(entry)
        return JSONResponse(entry, 201)

    @app.get("/rest/api/3/user/search")
    async def user_search(query: str) -> list[dict[str, Any]]:
        return [u for u in state.users if query.casefold() in u["emailAddress"].casefold()]

    @app.post("/rest/api/3/webhook")
    async def register(request: Request) -> dict[str, Any]:
        body = await request.json()
        webhook_id = next(state.ids)
        state.webhooks[webhook_id] = {
            "url": body["url"],
            **body["webhooks"][0],
            "expires": time.time() + 30 * 86400,
        }
        return {"webhookRegistrationResult": [{"createdWebhookId": webhook_id}]}

    @app.put("/rest/api/3/webhook/refresh")
    async def refresh(request: Request) -> dict[str, Any]:
        for webhook_id in (await request.json())["webhookIds"]:
            if webhook_id in state.webhooks:
                state.webhooks[webhook_id]["expires"] = time.time() + 30 * 86400
        return {
            "expirationDate": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 30 * 86400))
        }

    @app.delete("/rest/api/3/webhook")
    async def delete(request: Request) -> Response:
        for webhook_id in (await request.json())["webhookIds"]:
            state.webhooks.pop(webhook_id, None)
        return Response(status_code=202)

    return app


@contextmanager
def jira_server(state: JiraState | None = None) -> Iterator[tuple[str, JiraState]]:
    """A running test Jira: its base URL and its state."""
    state = state or JiraState()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test Jira did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def issue_updated(issue: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """A `jira:issue_updated` webhook body (Jira Cloud's shape) for ``issue`` with a changelog."""
    return {
        "timestamp": int(time.time() * 1000),
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Ana"},
        "issue": issue,
        "changelog": {"id": "10500", "items": items},
    }


def signed(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature": f"sha256={digest}",
        "Content-Type": "application/json",
        "X-Atlassian-Webhook-Identifier": "1",
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
