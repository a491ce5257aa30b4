"""Jira and Git, linked both ways: connections (credentials sealed, never answered), what Jira's webhooks
change in RecForge (by RecForge's task rules), and what Git pushes link and close."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change, record
from services.api.context import ProjectContext
from services.api.integrations import outbox
from services.api.integrations.jira import Jira, JiraError
from services.api.integrations.schemas import (
    CommitRead,
    GitConnect,
    GitConnected,
    GitRead,
    JiraConnect,
    JiraConnected,
    JiraEventResult,
    JiraRead,
    PushResult,
    TaskLinks,
)
from services.api.integrations.sync import DEFAULT_STATUS_MAP, pending
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.schemas import snapshot
from services.api.tasks.service import FIELDS as TASK_FIELDS
from services.api.tasks.service import TRANSITIONS
from shared.errors import NotFound, Unauthorized, ValidationFailed
from shared.models import GitConnection, JiraConnection, JiraLink, Task, TaskCommit, User
from shared.models.enums import GitProvider, TaskStatus
from shared.security import seal, unseal

log = logging.getLogger("recforge.api.integrations")

JIRA_EVENTS = ["jira:issue_created", "jira:issue_updated"]
WEBHOOK_LIFE = dt.timedelta(days=30)
RF_KEY = re.compile(r"\bRF-(\d+)\b", re.IGNORECASE)
ISSUE_KEY = re.compile(r"\b([A-Z][A-Z0-9_]+-\d+)\b")
CLOSING = re.compile(
    r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\b\s*:?\s*((?:[A-Z][A-Z0-9_]*-\d+[\s,]*(?:and\s+)?)+)",
    re.IGNORECASE,
)
MAX_COMMITS = 1000


# -- Jira connection -------------------------------------------------------------------------------


def _jira_read(connection: JiraConnection, base_url: str, waiting: int = 0) -> JiraRead:
    read = JiraRead.model_validate(
        {
            **{
                name: getattr(connection, name) for name in JiraRead.model_fields if hasattr(connection, name)
            },
            "webhook_url": f"{base_url}/api/v1/integrations/jira/{connection.id}/webhook",
            "status_map": connection.status_map or DEFAULT_STATUS_MAP,
            "pending_calls": waiting,
        }
    )
    return read


async def jira_connect(
    session: AsyncSession, ctx: ProjectContext, data: JiraConnect, base_url: str, secret_key: str
) -> JiraConnected:
    """Check the credentials against Jira, store them sealed, and register the webhook (when asked)."""
    ctx.require(Action.update_project)
    token = data.api_token.get_secret_value()
    jira = Jira(data.site_url, data.user_email, token)
    try:
        await jira.myself()
    except JiraError as exc:
        raise ValidationFailed(
            f"Jira did not accept the credentials ({exc}): check user_email and api_token "
            "(an API token from id.atlassian.com, not the password)",
            detail=[{"loc": ["body", "api_token"], "msg": "refused by Jira"}],
        ) from None
    try:
        await jira.project(data.project_key)
    except JiraError as exc:
        raise ValidationFailed(
            f"Jira has no project {data.project_key} this account can see ({exc})",
            detail=[{"loc": ["body", "project_key"], "msg": "not found in Jira"}],
        ) from None
    await projects_repository.lock_project(session, ctx.project.id)
    connection = (
        await session.execute(select(JiraConnection).where(JiraConnection.project_id == ctx.project.id))
    ).scalar_one_or_none()
    before = (
        snapshot(connection, ("site_url", "project_key", "user_email", "status_map")) if connection else None
    )
    if connection is None:
        connection = JiraConnection(project_id=ctx.project.id, created_by=ctx.principal.user_id)
        session.add(connection)
    webhook_secret = secrets.token_urlsafe(32)
    connection.site_url = data.site_url
    connection.project_key = data.project_key
    connection.user_email = data.user_email
    connection.token_sealed = seal(secret_key, token)
    connection.webhook_secret_sealed = seal(secret_key, webhook_secret)
    connection.issue_type = data.issue_type
    connection.status_map = {**DEFAULT_STATUS_MAP, **{k.value: v for k, v in data.status_map.items()}}
    connection.enabled = True
    connection.last_error = None
    await session.flush()
    base = data.public_url or base_url
    url = f"{base}/api/v1/integrations/jira/{connection.id}/webhook"
    if data.register_webhook:
        try:
            if connection.webhook_id is not None:
                await jira.delete_webhooks([connection.webhook_id])
            connection.webhook_id = await jira.register_webhook(
                url, f"project = {data.project_key}", JIRA_EVENTS
            )
            connection.webhook_expires_at = dt.datetime.now(dt.UTC) + WEBHOOK_LIFE
        except JiraError as exc:
            connection.webhook_id = None
            connection.last_error = (
                f"the webhook was not registered ({exc}): register an admin webhook in Jira "
                "(System > WebHooks) "
                f"for {url} with the webhook secret"
            )
    await session.flush()
    await audit_change(
        session, ctx, "jira.connect", "jira_connection", connection.id, before,
        snapshot(connection, ("site_url", "project_key", "user_email", "status_map", "webhook_id")),
    )  # fmt: skip
    log.info("Jira connected", extra={"project_id": str(ctx.project.id), "jira_project": data.project_key})
    read = _jira_read(connection, base)
    return JiraConnected(**read.model_dump(), webhook_secret=webhook_secret)


Connection = TypeVar("Connection", JiraConnection, GitConnection)


async def _connection_of(session: AsyncSession, model: type[Connection], project_id: uuid.UUID) -> Connection:
    """The project's connection of that kind; 404 saying how to make one."""
    connection = (
        await session.execute(select(model).where(model.project_id == project_id))
    ).scalar_one_or_none()
    if connection is None:
        kind = "Jira" if model is JiraConnection else "Git"
        raise NotFound(f"this project has no {kind} connection: PUT one first")
    return connection


async def jira_get(session: AsyncSession, ctx: ProjectContext, base_url: str) -> JiraRead:
    connection = await _connection_of(session, JiraConnection, ctx.project.id)
    return _jira_read(connection, base_url, await pending(session, ctx.project.id))


async def jira_delete(session: AsyncSession, ctx: ProjectContext, secret_key: str) -> None:
    """Forget the connection, its links and its queued calls (the webhook is deleted in Jira if it can be)."""
    ctx.require(Action.update_project)
    connection = await _connection_of(session, JiraConnection, ctx.project.id)
    if connection.webhook_id is not None:
        jira = Jira(connection.site_url, connection.user_email, unseal(secret_key, connection.token_sealed))
        try:
            await jira.delete_webhooks([connection.webhook_id])
        except JiraError as exc:
            log.warning("could not delete the Jira webhook: %s", exc)
    before = snapshot(connection, ("site_url", "project_key", "user_email"))
    await session.delete(connection)
    await session.flush()
    await audit_change(session, ctx, "jira.disconnect", "jira_connection", connection.id, before, None)


# -- Jira's webhooks -------------------------------------------------------------------------------


def _signed(secret: str, body: bytes, header: str | None) -> bool:
    """Jira's X-Hub-Signature: "sha256=" + the hex HMAC-SHA256 of the raw body under the webhook secret."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(
        expected.encode(), header.removeprefix("sha256=").strip().encode("utf-8", "replace")
    )


def _body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValidationFailed("the webhook body is not JSON") from None
    if not isinstance(payload, dict):
        raise ValidationFailed("the webhook body is not a JSON object")
    return payload


async def _audit_task(
    session: AsyncSession,
    task: Task,
    before: dict[str, Any],
    after: dict[str, Any],
    source: str,
    request_id: str,
) -> None:
    await record(
        session,
        action="task.update",
        entity_type="task",
        entity_id=task.id,
        project_id=task.project_id,
        actor_user_id=None,
        actor_key_id=None,
        before=before,
        after={**after, "source": source},
        request_id=request_id[:200],
    )


async def jira_event(
    session: AsyncSession, connection_id: uuid.UUID, body: bytes, signature: str | None, secret_key: str
) -> JiraEventResult:
    """Apply a Jira issue event to the linked task: title, assignee (by email, a member) and status (by
    RecForge's rules; a move they refuse goes back as a comment on the issue). Last writer wins per field;
    the audit log keeps both values. A body whose signature does not match changes nothing."""
    connection = await session.get(JiraConnection, connection_id)
    if connection is None or not _signed(
        unseal(secret_key, connection.webhook_secret_sealed), body, signature
    ):
        raise Unauthorized("the webhook's X-Hub-Signature does not match this connection's secret")
    payload = _body(body)
    result = JiraEventResult(applied=[], refused=[])
    if payload.get("webhookEvent") != "jira:issue_updated" or not connection.enabled:
        return result
    issue = payload.get("issue") or {}
    link = (
        await session.execute(
            select(JiraLink).where(
                JiraLink.connection_id == connection.id, JiraLink.issue_key == issue.get("key")
            )
        )
    ).scalar_one_or_none()
    if link is None:
        return result
    task = await session.get(Task, link.task_id, with_for_update=True)
    if task is None:
        return result
    request_id = f"jira:{issue.get('key')}:{payload.get('timestamp', '')}"
    fields = issue.get("fields") or {}
    inverse = {
        name.casefold(): status for status, name in (connection.status_map or DEFAULT_STATUS_MAP).items()
    }
    for item in (payload.get("changelog") or {}).get("items") or []:
        field = item.get("field")
        if field == "summary":
            title = str(item.get("toString") or fields.get("summary") or "").strip()[:300]
            if title and title != task.title:
                before = {"title": task.title}
                task.title = title
                await _audit_task(session, task, before, {"title": title}, "jira", request_id)
                result.applied.append("title")
        elif field == "status":
            name = str(item.get("toString") or "")
            wanted = inverse.get(name.casefold())
            current = TaskStatus(task.status)
            if wanted is None:
                refusal = (
                    f"RecForge has no task status mapped to the Jira status {name!r}; "
                    f"the task stays {current.value}."
                )
            elif wanted == current.value:
                continue  # RecForge's own move, coming back
            elif TaskStatus(wanted) not in TRANSITIONS[current]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current]))
                refusal = (
                    f"RecForge refused this move: a task cannot go from {current.value} to {wanted} "
                    f"(from {current.value} it may go to {allowed}); RF-{task.number} stays {current.value}."
                )
            else:
                task.status = wanted
                task.completed_at = dt.datetime.now(dt.UTC) if wanted == TaskStatus.done.value else None
                await _audit_task(
                    session, task, {"status": current.value}, {"status": wanted}, "jira", request_id
                )
                result.applied.append("status")
                continue
            await outbox.comment(session, task, refusal)
            result.refused.append(refusal)
        elif field == "assignee":
            email = ((fields.get("assignee") or {}).get("emailAddress") or "").strip()
            user_id = None
            if email:
                user = (
                    await session.execute(select(User).where(func.lower(User.email) == email.lower()))
                ).scalar_one_or_none()
                member = user and await projects_repository.member_role(session, task.project_id, user.id)
                if not member:
                    refusal = (
                        f"{email} is not a member of the RecForge project: "
                        f"RF-{task.number}'s assignee is kept."
                    )
                    await outbox.comment(session, task, refusal)
                    result.refused.append(refusal)
                    continue
                assert user is not None
                user_id = user.id
            if user_id != task.assignee_id:
                previous: dict[str, Any] = {
                    "assignee_id": str(task.assignee_id) if task.assignee_id else None
                }
                task.assignee_id = user_id
                await _audit_task(
                    session,
                    task,
                    previous,
                    {"assignee_id": str(user_id) if user_id else None},
                    "jira",
                    request_id,
                )
                result.applied.append("assignee")
    await session.flush()
    return result


# -- Git -------------------------------------------------------------------------------------------


def _git_read(connection: GitConnection, base_url: str) -> GitRead:
    return GitRead(
        id=connection.id,
        project_id=connection.project_id,
        provider=GitProvider(connection.provider),
        push_url=f"{base_url}/api/v1/integrations/git/{connection.id}/push",
        created_at=connection.created_at,
    )


async def git_connect(
    session: AsyncSession, ctx: ProjectContext, data: GitConnect, base_url: str, secret_key: str
) -> GitConnected:
    ctx.require(Action.update_project)
    await projects_repository.lock_project(session, ctx.project.id)
    connection = (
        await session.execute(select(GitConnection).where(GitConnection.project_id == ctx.project.id))
    ).scalar_one_or_none()
    if connection is None:
        connection = GitConnection(project_id=ctx.project.id, created_by=ctx.principal.user_id)
        session.add(connection)
    secret = data.secret.get_secret_value() if data.secret else secrets.token_urlsafe(32)
    connection.provider = data.provider.value
    connection.secret_sealed = seal(secret_key, secret)
    await session.flush()
    await session.refresh(connection)
    await audit_change(
        session, ctx, "git.connect", "git_connection", connection.id, None, {"provider": data.provider.value}
    )
    return GitConnected(**_git_read(connection, base_url).model_dump(), secret=secret)


async def git_get(session: AsyncSession, ctx: ProjectContext, base_url: str) -> GitRead:
    return _git_read(await _connection_of(session, GitConnection, ctx.project.id), base_url)


async def git_delete(session: AsyncSession, ctx: ProjectContext) -> None:
    ctx.require(Action.update_project)
    connection = await _connection_of(session, GitConnection, ctx.project.id)
    await session.delete(connection)
    await session.flush()
    await audit_change(
        session,
        ctx,
        "git.disconnect",
        "git_connection",
        connection.id,
        {"provider": connection.provider},
        None,
    )


def _git_authentic(provider: str, secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    if provider == GitProvider.github.value:
        header = headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))
    token = headers.get("x-gitlab-token", "")
    return hmac.compare_digest(secret.encode(), token.encode("utf-8", "replace"))


def _commits(provider: str, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """(commits, ref, repository) of a GitHub or GitLab push payload."""
    if provider == GitProvider.github.value:
        repository = (payload.get("repository") or {}).get("full_name")
    else:
        repository = (payload.get("project") or {}).get("path_with_namespace")
    commits = payload.get("commits") or []
    if not isinstance(commits, list):
        raise ValidationFailed("the push's commits are not a list")
    return commits[:MAX_COMMITS], payload.get("ref"), repository


async def _close(session: AsyncSession, task: Task, sha: str) -> list[dict[str, Any]]:
    """Move a task a commit closes to in_review, one allowed step at a time (todo and blocked go through
    in_progress); a task in review or done stays."""
    moves = []
    for step in (TaskStatus.in_progress, TaskStatus.in_review):
        current = TaskStatus(task.status)
        if current in (TaskStatus.in_review, TaskStatus.done) or step == current:
            continue
        if step not in TRANSITIONS[current]:
            continue
        before = snapshot(task, TASK_FIELDS)
        task.status = step.value
        await _audit_task(
            session,
            task,
            {"status": current.value},
            {"status": step.value, "commit": sha},
            "git",
            f"git:{sha}",
        )
        await outbox.task_changed(session, task, before, {"status": step.value})
        moves.append({"task_id": str(task.id), "from": current.value, "to": step.value})
    return moves


async def git_push(
    session: AsyncSession, connection_id: uuid.UUID, headers: Mapping[str, str], body: bytes, secret_key: str
) -> PushResult:
    """Link each pushed commit to the tasks its message names (RF-<n>, or a linked Jira issue's key);
    "Closes RF-<n>" (or closes, fixes, resolves) moves the task to in_review. A push whose signature
    (GitHub) or token (GitLab) does not match changes nothing."""
    connection = await session.get(GitConnection, connection_id)
    if connection is None or not _git_authentic(
        connection.provider, unseal(secret_key, connection.secret_sealed), headers, body
    ):
        raise Unauthorized(
            "the push's signature (GitHub) or token (GitLab) does not match this connection's secret"
        )
    event = headers.get("x-github-event") or headers.get("x-gitlab-event") or ""
    if event not in ("push", "Push Hook"):
        return PushResult(commits=0, linked=[], moved=[])  # GitHub's ping, and events not subscribed to
    commits, ref, repository = _commits(connection.provider, _body(body))
    project_id = connection.project_id
    jira_keys = {
        key: task_id
        for key, task_id in await session.execute(
            select(JiraLink.issue_key, JiraLink.task_id)
            .join(JiraConnection, JiraConnection.id == JiraLink.connection_id)
            .where(JiraConnection.project_id == project_id)
        )
    }
    linked: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    for commit in commits:
        message = str(commit.get("message") or "")
        sha = str(commit.get("id") or "")[:64]
        if not sha:
            continue
        numbers = {int(n) for n in RF_KEY.findall(message)}
        named: dict[uuid.UUID, str] = {}
        if numbers:
            found = await session.execute(
                select(Task.id, Task.number).where(Task.project_id == project_id, Task.number.in_(numbers))
            )
            named.update({task_id: f"RF-{number}" for task_id, number in found})
        for key in ISSUE_KEY.findall(message):
            if key in jira_keys:
                named[jira_keys[key]] = key
        closing = {
            k.upper()
            for group in CLOSING.findall(message)
            for k in re.findall(r"[A-Za-z][A-Za-z0-9_]*-\d+", group)
        }
        author = commit.get("author") or {}
        for task_id, key in named.items():
            closes = key.upper() in closing
            inserted = await session.execute(
                insert(TaskCommit)
                .values(
                    task_id=task_id, project_id=project_id, sha=sha, message=message[:4000],
                    url=(commit.get("url") or None), author=(author.get("email") or author.get("name")),
                    ref=ref, repository=repository, committed_at=_time(commit.get("timestamp")),
                    closes=closes,
                )
                .on_conflict_do_nothing(index_elements=["task_id", "sha"])
                .returning(TaskCommit.id)
            )  # fmt: skip
            if inserted.scalar_one_or_none() is None:
                continue  # pushed before (another branch, a re-push)
            linked.append({"sha": sha, "task_id": str(task_id), "key": key, "closes": closes})
            if closes:
                task = await session.get(Task, task_id, with_for_update=True)
                if task is not None:
                    moved += await _close(session, task, sha)
    await session.flush()
    log.info(
        "git push", extra={"project_id": str(project_id), "commits": len(commits), "linked": len(linked)}
    )
    return PushResult(commits=len(commits), linked=linked, moved=moved)


def _time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


async def task_links(session: AsyncSession, task: Task) -> TaskLinks:
    link = await session.get(JiraLink, task.id)
    url = None
    if link is not None:
        connection = await session.get(JiraConnection, link.connection_id)
        url = f"{connection.site_url}/browse/{link.issue_key}" if connection else None
    commits = (
        await session.execute(
            select(TaskCommit).where(TaskCommit.task_id == task.id).order_by(TaskCommit.created_at)
        )
    ).scalars()
    return TaskLinks(
        task_id=task.id,
        key=f"RF-{task.number}",
        jira_issue_key=link.issue_key if link else None,
        jira_issue_url=url,
        commits=[CommitRead.model_validate(c) for c in commits],
    )
