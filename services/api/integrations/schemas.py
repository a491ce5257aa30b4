from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.api.webhooks.schemas import _check_url
from shared.models.enums import GitProvider, TaskStatus

PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")


class JiraConnect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site_url: str = Field(max_length=500, description="e.g. https://your-team.atlassian.net")
    project_key: str = Field(description="The Jira project tasks become issues of, e.g. SHOP.")
    user_email: str = Field(min_length=3, max_length=320, description="The Jira account RecForge acts as.")
    api_token: SecretStr = Field(
        min_length=1, max_length=1000, description="That account's API token: kept sealed, never answered."
    )
    issue_type: str = Field("Task", min_length=1, max_length=64)
    status_map: dict[TaskStatus, str] = Field(
        default_factory=dict,
        description="RecForge status -> Jira status name (default: To Do, In Progress, In Review, Done, "
        "Blocked). Moves go through the workflow's transitions to that status, found by name.",
    )
    register_webhook: bool = Field(
        True,
        description="Register a dynamic webhook (issue created/updated in the project) through Jira's REST "
        "API; Jira drops such webhooks after 30 days unless refreshed, which RecForge does.",
    )
    public_url: str | None = Field(
        None, max_length=500, description="How Jira reaches this API (default: the URL this request used)."
    )

    @field_validator("site_url", "public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value).rstrip("/") if value is not None else None

    @field_validator("project_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not PROJECT_KEY.match(value):
            raise ValueError("a Jira project key is upper-case letters and digits, e.g. SHOP")
        return value

    @field_validator("status_map")
    @classmethod
    def _names(cls, value: dict[TaskStatus, str]) -> dict[TaskStatus, str]:
        if any(not name.strip() or len(name) > 100 for name in value.values()):
            raise ValueError("each Jira status name is 1 to 100 characters")
        return value


class JiraRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    site_url: str
    project_key: str
    user_email: str
    issue_type: str
    status_map: dict[str, str]
    enabled: bool
    webhook_url: str = Field(description="Where Jira sends issue events (signed with the webhook secret).")
    webhook_id: int | None
    webhook_expires_at: dt.datetime | None
    last_error: str | None
    pending_calls: int = 0
    created_at: dt.datetime


class JiraConnected(JiraRead):
    webhook_secret: str = Field(
        description="Shown once: Jira signs each webhook body with it (X-Hub-Signature: sha256=HMAC); "
        "give it "
        "to an admin webhook in Jira's settings when REST registration is not available."
    )


class GitConnect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: GitProvider
    secret: SecretStr | None = Field(
        None,
        min_length=16,
        max_length=200,
        description="The webhook secret (GitHub) or token (GitLab); default: a new random one, shown once.",
    )


class GitRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    provider: GitProvider
    push_url: str = Field(description="The push webhook's URL to give the Git host.")
    created_at: dt.datetime


class GitConnected(GitRead):
    secret: str = Field(description="Shown once: the secret (GitHub) or token (GitLab) the host sends.")


class CommitRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sha: str
    message: str
    url: str | None
    author: str | None
    ref: str | None
    repository: str | None
    committed_at: dt.datetime | None
    closes: bool
    created_at: dt.datetime


class TaskLinks(BaseModel):
    task_id: uuid.UUID
    key: str = Field(description="RF-<number>: what commit messages name.")
    jira_issue_key: str | None
    jira_issue_url: str | None
    commits: list[CommitRead]


class PushResult(BaseModel):
    commits: int
    linked: list[dict[str, Any]] = Field(description="[{sha, task_id, key, closes}]")
    moved: list[dict[str, Any]] = Field(description="[{task_id, from, to}] for the Closes that moved a task.")


class JiraEventResult(BaseModel):
    applied: list[str]
    refused: list[str]
