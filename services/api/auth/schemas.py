from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, EmailStr, Field

from services.api.auth.scopes import ServiceScope
from shared.models.enums import KeyRole


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: EmailStr


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    email: str
    is_active: bool
    created_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID
    name: str = Field(min_length=1, max_length=100)
    role: KeyRole = KeyRole.user
    project_id: uuid.UUID | str | None = Field(
        default=None, description="Project id or slug; required for service keys."
    )
    scopes: list[ServiceScope] | None = Field(
        default=None, description="Service keys only; default: every scope."
    )
    expires_at: AwareDatetime | None = None


class KeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    role: KeyRole
    project_id: uuid.UUID | None
    scopes: list[str]
    prefix: str = Field(validation_alias=AliasChoices("key_prefix", "prefix"))
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class KeyCreated(KeyRead):
    key: str = Field(description="The secret. Shown in this response only: store it now.")
