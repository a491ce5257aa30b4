from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import SessionDep
from services.api.errors import ERRORS
from services.api.pagination import DEFAULT_PAGE_SIZE, LimitQuery
from services.api.webhooks import service
from services.api.webhooks.schemas import (
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from shared.models.enums import DeliveryStatus

router = APIRouter(tags=["webhooks"])


@router.post(
    "/projects/{project_id}/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={**ERRORS, 409: {"description": f"The project has {service.MAX_HOOKS} webhooks already"}},
)
async def create_webhook(ctx: ProjectDep, data: WebhookCreate, session: SessionDep) -> WebhookCreated:
    """Subscribe a URL to events of the project. Each delivery is a JSON POST signed with the hook's
    secret: `X-RecForge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>." + body>`. The secret
    is in this answer only. Owners and maintainers."""
    return await service.create(session, ctx, data)


@router.get("/projects/{project_id}/webhooks", response_model=list[WebhookRead], responses=ERRORS)
async def list_webhooks(ctx: ProjectDep, session: SessionDep) -> list[WebhookRead]:
    """The project's webhooks, oldest first (without their secrets)."""
    return await service.list_hooks(session, ctx)


@router.get("/webhooks/{webhook_id}", response_model=WebhookRead, responses=ERRORS)
async def get_webhook(webhook_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> WebhookRead:
    _, hook = await service.load(session, principal, webhook_id)
    return WebhookRead.model_validate(hook)


@router.patch("/webhooks/{webhook_id}", response_model=WebhookRead, responses=ERRORS)
async def update_webhook(
    webhook_id: uuid.UUID, data: WebhookUpdate, session: SessionDep, principal: CurrentPerson
) -> WebhookRead:
    """Change the URL, the events, the description, or turn the hook off (its pending deliveries fail)
    and on again. The secret cannot be changed: make a new hook and delete this one."""
    ctx, hook = await service.load(session, principal, webhook_id, for_update=True)
    return await service.update(session, ctx, hook, data)


@router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_webhook(webhook_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> Response:
    """Delete the hook and its deliveries, sent or not."""
    ctx, hook = await service.load(session, principal, webhook_id, for_update=True)
    await service.delete(session, ctx, hook)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryRead], responses=ERRORS)
async def list_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPerson,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
) -> list[DeliveryRead]:
    """The hook's deliveries, newest first: what was sent, how often, and what the receiver answered."""
    _, hook = await service.load(session, principal, webhook_id)
    return await service.list_deliveries(session, hook, status=delivery_status, limit=limit)


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryRead,
    responses={**ERRORS, 409: {"description": "The hook is inactive"}},
)
async def test_webhook(webhook_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> DeliveryRead:
    """Queue a delivery of the event `test` to the hook (whatever it subscribes to); it is sent within
    moments, and its outcome is listed with the hook's deliveries."""
    _, hook = await service.load(session, principal, webhook_id)
    return await service.send_test(session, hook)
