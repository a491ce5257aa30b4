from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field

from shared.models.enums import DeploymentRole


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_percent: int | None = Field(
        None,
        ge=1,
        le=99,
        description="Serve the version to this share of traffic beside the role's current version "
        "(a canary, split by a hash of the user or request id). Omitted: the version takes all traffic.",
    )


class DeploymentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    role: DeploymentRole = Field(
        description="retriever (bi-encoder), reranker (cross-encoder) or classifier."
    )
    model_version_id: uuid.UUID
    canary_model_version_id: uuid.UUID | None
    canary_percent: int
    is_active: bool
    created_by: uuid.UUID | None
    created_at: dt.datetime
    deactivated_at: dt.datetime | None
