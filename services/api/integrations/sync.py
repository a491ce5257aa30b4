"""The Jira sync loop: makes the calls the outbox holds, oldest first and one at a time per task (an
issue is created before it is moved), and keeps the connections' webhooks alive.

A call Jira refuses (4xx) fails with Jira's own words, kept on the row and the connection; a call Jira
asks to make later (429 or 503 with Retry-After) or that gets no answer is tried again after that long
(at least the backoff), up to webhook_max_attempts times. Rows are leased, so two API replicas never
make the same call."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.api.deps import ApiResources
from services.api.integrations.jira import Jira, JiraError
from services.api.webhooks.delivery import backoff_s
from shared.db import unit_of_work
from shared.models import JiraConnection, JiraLink, JiraOutbox, Task, User
from shared.models.enums import JiraAction, OutboxStatus
from shared.security import unseal

log = logging.getLogger("recforge.api.jira")

BATCH = 20
LEASE_S = 60.0
REFRESH_BEFORE = dt.timedelta(days=7)  # Jira drops a dynamic webhook 30 days after its last refresh
REFRESH_EVERY_S = 3600.0

DEFAULT_STATUS_MAP = {
    "todo": "To Do",
    "in_progress": "In Progress",
    "in_review": "In Review",
    "done": "Done",
    "blocked": "Blocked",
}


def client(connection: JiraConnection, secret: str, transport: Any = None) -> Jira:
    return Jira(
        connection.site_url,
        connection.user_email,
        unseal(secret, connection.token_sealed),
        transport=transport,
    )


async def _claim(session: AsyncSession) -> list[JiraOutbox]:
    """Due rows with no earlier pending row of the same task, leased for LEASE_S."""
    earlier = aliased(JiraOutbox)
    now = dt.datetime.now(dt.UTC)
    query = (
        select(JiraOutbox)
        .where(
            JiraOutbox.status == OutboxStatus.pending.value,
            JiraOutbox.next_attempt_at <= now,
            or_(JiraOutbox.leased_until.is_(None), JiraOutbox.leased_until < now),
            ~exists().where(
                and_(
                    earlier.task_id == JiraOutbox.task_id,
                    earlier.status == OutboxStatus.pending.value,
                    earlier.created_at < JiraOutbox.created_at,
                )
            ),
        )
        .order_by(JiraOutbox.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    rows = list((await session.execute(query)).scalars())
    for row in rows:
        row.leased_until = now + dt.timedelta(seconds=LEASE_S)
    return rows


async def _issue_key(session: AsyncSession, task_id: uuid.UUID | None) -> str | None:
    if task_id is None:
        return None
    link = await session.get(JiraLink, task_id)
    return link.issue_key if link else None


async def _move(jira: Jira, key: str, connection: JiraConnection, status: str) -> None:
    """Transition the issue to the Jira status RecForge's ``status`` maps to, by the workflow's own
    transition ids (they differ per workflow, so they are looked up each time)."""
    target = (connection.status_map or DEFAULT_STATUS_MAP).get(status)
    if not target:
        raise JiraError(f"no Jira status is mapped to the task status {status!r}: add it to status_map")
    current = (await jira.issue(key)).get("fields", {}).get("status", {}).get("name")
    if current and current.casefold() == target.casefold():
        return
    options = await jira.transitions(key)
    chosen = next(
        (t for t in options if str(t.get("to", {}).get("name", "")).casefold() == target.casefold()), None
    )
    if chosen is None:
        names = ", ".join(sorted({str(t.get("to", {}).get("name")) for t in options})) or "none"
        raise JiraError(
            f"the issue's workflow offers no transition to {target!r} from {current!r} (it offers: {names})"
        )
    await jira.transition(key, str(chosen["id"]))


async def _perform(session: AsyncSession, row: JiraOutbox, connection: JiraConnection, jira: Jira) -> None:
    action = JiraAction(row.action)
    if action == JiraAction.create_issue:
        if await _issue_key(session, row.task_id) is not None:
            return
        task = await session.get(Task, row.task_id) if row.task_id else None
        if task is None:
            return  # deleted since: nothing to create
        text = f"{task.description}\n\nRecForge task RF-{task.number}".strip()
        created = await jira.create_issue(connection.project_key, connection.issue_type, task.title, text)
        session.add(
            JiraLink(
                task_id=task.id,
                connection_id=connection.id,
                issue_id=str(created["id"]),
                issue_key=created["key"],
            )
        )
        await session.flush()
        await _move(jira, created["key"], connection, task.status)
        return
    key = await _issue_key(session, row.task_id)
    if key is None:
        raise JiraError("the task has no linked Jira issue")
    if action == JiraAction.transition:
        await _move(jira, key, connection, row.payload["status"])
    elif action == JiraAction.update:
        fields: dict[str, Any] = {}
        if "title" in row.payload:
            fields["summary"] = str(row.payload["title"])[:255]
        if "assignee_id" in row.payload:
            assignee = row.payload["assignee_id"]
            if assignee is None:
                fields["assignee"] = None
            else:
                user = await session.get(User, uuid.UUID(assignee))
                account = await jira.account_id(user.email) if user else None
                if account is None:
                    raise JiraError(
                        "no Jira user has the email of the task's assignee "
                        f"({user.email if user else assignee})"
                    )
                fields["assignee"] = {"accountId": account}
        if fields:
            await jira.update(key, fields)
    else:
        await jira.comment(key, str(row.payload["text"]))


async def sync_due(resources: ApiResources, transport: Any = None) -> int:
    """Make up to BATCH due calls; how many were tried."""
    settings = resources.settings
    secret = settings.secret_key.get_secret_value()
    async with unit_of_work(resources.sessionmaker) as session:
        batch = await _claim(session)
        ids = [row.id for row in batch]
    for row_id in ids:
        async with unit_of_work(resources.sessionmaker) as session:
            row = await session.get(JiraOutbox, row_id, with_for_update=True)
            if row is None or row.status != OutboxStatus.pending.value:
                continue
            connection = await session.get(JiraConnection, row.connection_id)
            row.attempts += 1
            context = {"outbox_id": str(row.id), "action": row.action, "attempt": row.attempts}
            try:
                if connection is None or not connection.enabled:
                    raise JiraError("the project's Jira connection was removed or disabled")
                await _perform(session, row, connection, client(connection, secret, transport))
            except (JiraError, ValueError, KeyError, TypeError) as exc:
                retry_after = getattr(exc, "retry_after", None)
                row.last_error = str(exc)[:2000]
                row.leased_until = None
                if retry_after is not None and row.attempts < settings.webhook_max_attempts:
                    wait = max(retry_after, backoff_s(settings.webhook_backoff_s, row.attempts))
                    row.next_attempt_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
                    log.warning("Jira call deferred %.0f s: %s", wait, exc, extra=context)
                else:
                    row.status = OutboxStatus.failed.value
                    row.done_at = dt.datetime.now(dt.UTC)
                    if connection is not None:
                        connection.last_error = f"{row.action}: {exc}"[:2000]
                    log.warning("Jira call failed: %s", exc, extra=context)
                continue
            row.status = OutboxStatus.done.value
            row.done_at = dt.datetime.now(dt.UTC)
            row.leased_until = None
            row.last_error = None
            log.info("Jira call made", extra=context)
    return len(ids)


async def refresh_webhooks(resources: ApiResources, transport: Any = None) -> int:
    """Extend the life of every registered webhook that expires within REFRESH_BEFORE."""
    secret = resources.settings.secret_key.get_secret_value()
    soon = dt.datetime.now(dt.UTC) + REFRESH_BEFORE
    refreshed = 0
    async with unit_of_work(resources.sessionmaker) as session:
        due = (
            await session.execute(
                select(JiraConnection).where(
                    JiraConnection.enabled,
                    JiraConnection.webhook_id.is_not(None),
                    or_(
                        JiraConnection.webhook_expires_at.is_(None), JiraConnection.webhook_expires_at < soon
                    ),
                )
            )
        ).scalars()
        for connection in due:
            assert connection.webhook_id is not None
            try:
                expires = await client(connection, secret, transport).refresh_webhooks(
                    [connection.webhook_id]
                )
            except (JiraError, ValueError) as exc:
                connection.last_error = f"webhook refresh: {exc}"[:2000]
                continue
            connection.webhook_expires_at = (
                dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
                if expires
                else dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
            )
            refreshed += 1
    return refreshed


async def sync_loop(resources: ApiResources, every_s: float = 2.0) -> None:
    """Make due Jira calls forever, and refresh webhooks hourly; a failed pass is logged and retried."""
    last_refresh = 0.0
    loop = asyncio.get_running_loop()
    while True:
        made = 0
        try:
            made = await sync_due(resources)
            if loop.time() - last_refresh >= REFRESH_EVERY_S:
                await refresh_webhooks(resources)
                last_refresh = loop.time()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("a Jira sync pass failed; the next one tries again", exc_info=True)
        if made < BATCH:
            await asyncio.sleep(every_s)


async def pending(session: AsyncSession, project_id: uuid.UUID) -> int:
    found = await session.execute(
        select(JiraOutbox.id).where(
            JiraOutbox.project_id == project_id, JiraOutbox.status == OutboxStatus.pending.value
        )
    )
    return len(found.all())
