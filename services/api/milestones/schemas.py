from __future__ import annotations

import datetime as dt
import uuid
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.api.schemas import reject_nulls
from shared.models.enums import MilestoneStatus


class MilestoneCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    due_date: dt.date | None = None


class MilestoneUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    due_date: dt.date | None = None
    status: MilestoneStatus | None = None

    @model_validator(mode="after")
    def _no_nulls_for_required(self) -> Self:
        reject_nulls(self, ("title", "description", "status"))
        return self


class MilestoneRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    description: str
    due_date: dt.date | None
    status: MilestoneStatus
    created_at: dt.datetime
    updated_at: dt.datetime
