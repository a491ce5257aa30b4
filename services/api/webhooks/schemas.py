from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.api.schemas import reject_nulls
from shared.models.enums import DeliveryStatus, WebhookEvent

# `test` is sent by POST /webhooks/{id}/test to any hook; nobody subscribes to it
SUBSCRIBABLE = tuple(event.value for event in WebhookEvent if event != WebhookEvent.test)
MAX_URL = 2000


def _check_url(url: str) -> str:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("the url may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("the url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the url must name a host")
    return url


def _check_events(events: list[str]) -> list[str]:
    unknown = [name for name in events if name not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown events {unknown}; valid events: {', '.join(SUBSCRIBABLE)}")
    if len(set(events)) != len(events):
        raise ValueError("each event may be named once")
    return events


EVENTS_DOC = f"What the hook receives; any of: {', '.join(SUBSCRIBABLE)}."


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL, description="An http:// or https:// URL that receives the POSTs.")
    events: list[str] = Field(min_length=1, max_length=len(SUBSCRIBABLE), description=EVENTS_DOC)
    description: str = Field("", max_length=500)
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=200,
        description="The HMAC-SHA-256 key of the X-RecForge-Signature header; omitted: one is generated. "
        "Answered once, in this response.",
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return _check_url(url)

    @field_validator("events")
    @classmethod
    def _valid_events(cls, events: list[str]) -> list[str]:
        return _check_events(events)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=MAX_URL)
    events: list[str] | None = Field(None, min_length=1, max_length=len(SUBSCRIBABLE), description=EVENTS_DOC)
    active: bool | None = Field(
        None, description="false: no new deliveries, and the pending ones fail; true: deliveries resume."
    )
    description: str | None = Field(None, max_length=500)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        return _check_url(url) if url is not None else None

    @field_validator("events")
    @classmethod
    def _valid_events(cls, events: list[str] | None) -> list[str] | None:
        return _check_events(events) if events is not None else None

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        reject_nulls(self, ("url", "events", "active", "description"))
        return self


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    url: str
    events: list[str]
    active: bool
    description: str
    created_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="The key of the X-RecForge-Signature header. Keep it: no other answer shows it."
    )


class DeliveryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    webhook_id: uuid.UUID
    event: str
    status: DeliveryStatus
    attempts: int
    response_status: int | None
    error: str | None
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None
    payload: dict[str, Any] = Field(description="The JSON body sent.")
