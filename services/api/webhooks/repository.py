from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, and_, any_, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Webhook, WebhookDelivery
from shared.models.enums import DeliveryStatus

PENDING = DeliveryStatus.pending.value


async def count_hooks(session: AsyncSession, project_id: uuid.UUID) -> int:
    query = select(func.count()).where(Webhook.project_id == project_id)
    return int((await session.execute(query)).scalar_one())


async def list_hooks(session: AsyncSession, project_id: uuid.UUID) -> list[Webhook]:
    query = select(Webhook).where(Webhook.project_id == project_id).order_by(Webhook.created_at, Webhook.id)
    return list((await session.execute(query)).scalars())


async def subscribed_hooks(session: AsyncSession, project_id: uuid.UUID, event: str) -> list[Webhook]:
    """The project's active hooks that subscribe to ``event``."""
    query = (
        select(Webhook)
        .where(
            Webhook.project_id == project_id,
            Webhook.active,
            literal(event, String) == any_(Webhook.events),
        )
        .order_by(Webhook.created_at, Webhook.id)
    )
    return list((await session.execute(query)).scalars())


async def list_deliveries(
    session: AsyncSession, webhook_id: uuid.UUID, *, status: str | None, limit: int
) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def fail_pending(session: AsyncSession, webhook_id: uuid.UUID, reason: str) -> int:
    """End the hook's pending deliveries (the hook was deactivated); how many."""
    query = (
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == PENDING)
        .values(status=DeliveryStatus.failed.value, error=reason)
        .returning(WebhookDelivery.id)
    )
    return len((await session.execute(query)).all())


# -- the sender's side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A due delivery leased to this process, with what sending it needs."""

    id: uuid.UUID
    webhook_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    attempts: int  # made before this one
    url: str
    secret: str


async def claim_due(session: AsyncSession, *, limit: int, lease_s: float) -> list[Claimed]:
    """Lease up to ``limit`` due pending deliveries of active hooks: their next attempt moves ``lease_s``
    ahead, so no other sender picks them while this one sends. SKIP LOCKED: senders claiming at once
    take different rows rather than wait for each other."""
    due = (
        select(WebhookDelivery.id)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
            Webhook.active,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    )
    ids = list((await session.execute(due)).scalars())
    if not ids:
        return []
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .values(next_attempt_at=func.now() + dt.timedelta(seconds=lease_s))
    )
    rows = await session.execute(
        select(WebhookDelivery, Webhook.url, Webhook.secret)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id.in_(ids))
        .order_by(WebhookDelivery.next_attempt_at)
    )
    return [
        Claimed(
            id=delivery.id,
            webhook_id=delivery.webhook_id,
            event=delivery.event,
            payload=delivery.payload,
            attempts=delivery.attempts,
            url=url,
            secret=secret,
        )
        for delivery, url, secret in rows.tuples()
    ]


def _still_claimed(claimed: Claimed) -> ColumnElement[bool]:
    # a sender whose lease ran out (and whose delivery another sender took up) writes nothing
    return and_(
        WebhookDelivery.id == claimed.id,
        WebhookDelivery.status == PENDING,
        WebhookDelivery.attempts == claimed.attempts,
    )


async def record_delivered(session: AsyncSession, claimed: Claimed, response_status: int) -> bool:
    result = await session.execute(
        update(WebhookDelivery)
        .where(_still_claimed(claimed))
        .values(
            status=DeliveryStatus.delivered.value,
            attempts=claimed.attempts + 1,
            response_status=response_status,
            error=None,
            delivered_at=func.now(),
        )
        .returning(WebhookDelivery.id)
    )
    return result.first() is not None


async def record_failure(
    session: AsyncSession,
    claimed: Claimed,
    *,
    response_status: int | None,
    error: str,
    retry_in_s: float | None,
) -> bool:
    """One more failed attempt; ``retry_in_s`` None: the last one, the delivery fails."""
    values: dict[str, Any] = {
        "attempts": claimed.attempts + 1,
        "response_status": response_status,
        "error": error,
    }
    if retry_in_s is None:
        values["status"] = DeliveryStatus.failed.value
    else:
        values["next_attempt_at"] = func.now() + dt.timedelta(seconds=retry_in_s)
    query = update(WebhookDelivery).where(_still_claimed(claimed)).values(**values)
    result = await session.execute(query.returning(WebhookDelivery.id))
    return result.first() is not None
