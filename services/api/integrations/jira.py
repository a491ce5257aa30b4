"""A small client of Jira Cloud's REST API v3: the calls RecForge makes, over httpx with basic auth (the
account's email and an API token).

Every call makes one attempt; the outbox retries. ``JiraError.retry_after`` is set when Jira asked to be
called later (HTTP 429, or 503, with Retry-After) or did not answer, so the caller can reschedule instead
of failing the work."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

USER_AGENT = "RecForge-Jira/1"
RETRYABLE = {429, 502, 503, 504}
DEFAULT_RETRY_S = 30.0


class JiraError(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After")
    if value is None:
        return DEFAULT_RETRY_S
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import datetime as dt

        return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_S


def doc(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document (what v3 takes for descriptions and comments), a line a
    paragraph."""
    lines = text.splitlines() or [""]
    return {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": line}] if line else []}
            for line in lines
        ],
    }


@dataclass
class Jira:
    site_url: str
    email: str
    token: str
    timeout_s: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None

    async def call(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        try:
            async with httpx.AsyncClient(
                base_url=self.site_url.rstrip("/"),
                auth=(self.email, self.token),
                timeout=self.timeout_s,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                transport=self.transport,
                follow_redirects=False,
            ) as client:
                response = await client.request(method, path, json=json, params=params)
        except httpx.TimeoutException:
            raise JiraError(
                f"Jira did not answer within {self.timeout_s:g} s", retry_after=DEFAULT_RETRY_S
            ) from None
        except httpx.HTTPError as exc:
            raise JiraError(
                f"cannot reach Jira at {self.site_url}: {type(exc).__name__}", retry_after=DEFAULT_RETRY_S
            ) from None
        if response.status_code in RETRYABLE:
            raise JiraError(
                f"Jira answered HTTP {response.status_code}",
                response.status_code,
                retry_after=_retry_after(response),
            )
        if response.status_code >= 400:
            raise JiraError(_message(response), response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def myself(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/rest/api/3/myself"))

    async def project(self, key: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/rest/api/3/project/{key}"))

    async def create_issue(
        self, project_key: str, issue_type: str, summary: str, description: str
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "project": {"key": project_key},
            "issuetype": {"name": issue_type},
            "summary": summary[:255],
        }
        if description:
            fields["description"] = doc(description)
        return dict(await self.call("POST", "/rest/api/3/issue", json={"fields": fields}))

    async def issue(self, key: str) -> dict[str, Any]:
        return dict(
            await self.call("GET", f"/rest/api/3/issue/{key}", params={"fields": "summary,status,assignee"})
        )

    async def transitions(self, key: str) -> list[dict[str, Any]]:
        found = await self.call("GET", f"/rest/api/3/issue/{key}/transitions")
        return list(found.get("transitions", []))

    async def transition(self, key: str, transition_id: str) -> None:
        await self.call(
            "POST", f"/rest/api/3/issue/{key}/transitions", json={"transition": {"id": transition_id}}
        )

    async def update(self, key: str, fields: dict[str, Any]) -> None:
        await self.call("PUT", f"/rest/api/3/issue/{key}", json={"fields": fields})

    async def comment(self, key: str, text: str) -> None:
        await self.call("POST", f"/rest/api/3/issue/{key}/comment", json={"body": doc(text)})

    async def account_id(self, email: str) -> str | None:
        found = await self.call("GET", "/rest/api/3/user/search", params={"query": email})
        for user in found or []:
            if str(user.get("emailAddress", "")).casefold() == email.casefold():
                return str(user["accountId"])
        return None

    async def register_webhook(self, url: str, jql: str, events: list[str]) -> int:
        """A dynamic webhook (Jira expires it 30 days after registration or its last refresh)."""
        found = await self.call(
            "POST",
            "/rest/api/3/webhook",
            json={"url": url, "webhooks": [{"events": events, "jqlFilter": jql}]},
        )
        results = found.get("webhookRegistrationResult") or []
        if not results or "createdWebhookId" not in results[0]:
            errors = "; ".join(results[0].get("errors", [])) if results else "no result"
            raise JiraError(f"Jira did not register the webhook: {errors}")
        return int(results[0]["createdWebhookId"])

    async def refresh_webhooks(self, ids: list[int]) -> str | None:
        """Extend the webhooks' life by another 30 days; Jira's new expiry date (ISO 8601)."""
        found = await self.call("PUT", "/rest/api/3/webhook/refresh", json={"webhookIds": ids})
        return found.get("expirationDate") if found else None

    async def delete_webhooks(self, ids: list[int]) -> None:
        await self.call("DELETE", "/rest/api/3/webhook", json={"webhookIds": ids})


def _message(response: httpx.Response) -> str:
    """Jira's own words: {"errorMessages": [...], "errors": {field: message}}."""
    try:
        body = response.json()
    except ValueError:
        return f"Jira answered HTTP {response.status_code}"
    parts = list(body.get("errorMessages") or []) if isinstance(body, dict) else []
    if isinstance(body, dict) and isinstance(body.get("errors"), dict):
        parts += [f"{field}: {message}" for field, message in body["errors"].items()]
    words = "; ".join(str(p) for p in parts) or "no detail"
    return f"Jira answered HTTP {response.status_code}: {words}"[:1000]
