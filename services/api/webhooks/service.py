"""Webhook rules: who may manage hooks, what they subscribe to, and ``emit``, which other domains call
to queue an event's deliveries in their own unit of work (the delivery loop sends them once committed).

A hook's secret signs every delivery (``delivery.verify`` is what a receiver runs); it is answered once,
when the hook is made, and never written to the audit log."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.integrations import outbox as integrations
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.schemas import snapshot
from services.api.webhooks import repository
from services.api.webhooks.schemas import (
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from shared.errors import Conflict
from shared.models import Webhook, WebhookDelivery
from shared.models.enums import DeliveryStatus, WebhookEvent

MAX_HOOKS = 20
FIELDS = ("url", "events", "active", "description")  # never the secret
TEST_MESSAGE = "a test delivery from RecForge"
DEACTIVATED = "the webhook was deactivated before this delivery was sent"


def _json_default(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _delivery(hook: Webhook, event: WebhookEvent, data: dict[str, Any]) -> WebhookDelivery:
    """A pending delivery of ``event`` to ``hook``; its payload is the exact body that will be sent."""
    delivery_id = uuid.uuid4()
    created_at = dt.datetime.now(dt.UTC)
    payload = {
        "id": str(delivery_id),
        "event": event.value,
        "project_id": str(hook.project_id),
        "created_at": created_at.isoformat(),
        "data": json.loads(json.dumps(data, default=_json_default)),
    }
    return WebhookDelivery(
        id=delivery_id,
        webhook_id=hook.id,
        project_id=hook.project_id,
        event=event.value,
        payload=payload,
        status=DeliveryStatus.pending.value,
        created_at=created_at,  # the payload's moment; next_attempt_at: the database's now()
    )


async def emit(
    session: AsyncSession, project_id: uuid.UUID, event: WebhookEvent, data: dict[str, Any]
) -> int:
    """Queue ``event`` for every active hook of the project subscribed to it, in the caller's unit of
    work (flushed, never committed: the deliveries exist exactly when the caller's change does). ``data``
    becomes the payload's ``data``; UUIDs and datetimes in it are written as strings. How many queued."""
    await integrations.lifecycle(session, project_id, event, data)  # comments on linked Jira issues
    hooks = await repository.subscribed_hooks(session, project_id, event.value)
    if not hooks:
        return 0
    session.add_all([_delivery(hook, event, data) for hook in hooks])
    await session.flush()
    return len(hooks)


async def create(session: AsyncSession, ctx: ProjectContext, data: WebhookCreate) -> WebhookCreated:
    ctx.require(Action.update_project)
    await projects_repository.lock_project(session, ctx.project.id)  # two creations cannot pass the cap
    if await repository.count_hooks(session, ctx.project.id) >= MAX_HOOKS:
        raise Conflict(f"a project has at most {MAX_HOOKS} webhooks; delete one first")
    hook = Webhook(
        project_id=ctx.project.id,
        url=data.url,
        events=data.events,
        description=data.description,
        secret=data.secret or secrets.token_urlsafe(32),
        created_by=ctx.principal.user_id,
    )
    session.add(hook)
    await session.flush()
    await session.refresh(hook)
    await audit_change(session, ctx, "webhook.create", "webhook", hook.id, None, snapshot(hook, FIELDS))
    return WebhookCreated.model_validate(hook)


async def list_hooks(session: AsyncSession, ctx: ProjectContext) -> list[WebhookRead]:
    ctx.require(Action.update_project)  # hooks name URLs that may carry tokens of their own
    return [WebhookRead.model_validate(hook) for hook in await repository.list_hooks(session, ctx.project.id)]


async def load(
    session: AsyncSession, principal: Principal, webhook_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, Webhook]:
    """The hook and its project's context, for a caller who may manage the project's hooks."""
    ctx, hook = await load_entity(session, principal, Webhook, webhook_id, "webhook", for_update=for_update)
    ctx.require(Action.update_project)
    return ctx, hook


async def update(
    session: AsyncSession, ctx: ProjectContext, hook: Webhook, data: WebhookUpdate
) -> WebhookRead:
    changes = data.model_dump(exclude_unset=True)
    before = snapshot(hook, FIELDS)
    for name, value in changes.items():
        setattr(hook, name, value)
    await session.flush()
    await session.refresh(hook)
    after = snapshot(hook, FIELDS)
    changed = [name for name in FIELDS if before[name] != after[name]]
    if changed:
        if before["active"] and not hook.active:
            # queued events would otherwise flood the receiver whenever the hook is turned back on
            await repository.fail_pending(session, hook.id, DEACTIVATED)
        await audit_change(
            session,
            ctx,
            "webhook.update",
            "webhook",
            hook.id,
            {name: before[name] for name in changed},
            {name: after[name] for name in changed},
        )
    return WebhookRead.model_validate(hook)


async def delete(session: AsyncSession, ctx: ProjectContext, hook: Webhook) -> None:
    before = snapshot(hook, FIELDS)
    await session.delete(hook)  # its deliveries go with it (ON DELETE CASCADE)
    await session.flush()
    await audit_change(session, ctx, "webhook.delete", "webhook", hook.id, before, None)


async def list_deliveries(
    session: AsyncSession, hook: Webhook, *, status: DeliveryStatus | None, limit: int
) -> list[DeliveryRead]:
    rows = await repository.list_deliveries(
        session, hook.id, status=status.value if status else None, limit=limit
    )
    return [DeliveryRead.model_validate(row) for row in rows]


async def send_test(session: AsyncSession, hook: Webhook) -> DeliveryRead:
    """Queue a `test` delivery to the hook, whatever it subscribes to."""
    if not hook.active:
        raise Conflict("the webhook is inactive: activate it (PATCH active=true) to send a test")
    delivery = _delivery(hook, WebhookEvent.test, {"webhook_id": hook.id, "message": TEST_MESSAGE})
    session.add(delivery)
    await session.flush()
    await session.refresh(delivery)
    return DeliveryRead.model_validate(delivery)
