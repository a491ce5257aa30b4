from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.models.enums import DeploymentRole, RuleAction


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


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: RuleAction = Field(
        description="pin (product at `position`), boost (rank score x `weight`), bury (after all others), "
        "hide, or hide_out_of_stock (no target)."
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Apply to this query only (case-insensitive); else to all.",
    )
    product_id: str | None = Field(None, min_length=1, max_length=200)
    category: str | None = Field(
        None, min_length=1, max_length=500, description="A category or a prefix of its path."
    )
    position: int | None = Field(None, ge=1, le=200, description="pin: the 1-based slot.")
    weight: float | None = Field(None, gt=0, le=1000, description="boost: the factor on the rank score.")
    note: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _fits_its_action(self) -> RuleCreate:
        target = (self.product_id is not None) + (self.category is not None)
        if self.action == RuleAction.hide_out_of_stock:
            if target or self.position is not None or self.weight is not None:
                raise ValueError("hide_out_of_stock takes no product_id, category, position or weight")
            return self
        if self.action == RuleAction.pin:
            if self.product_id is None or self.category is not None or self.position is None:
                raise ValueError("a pin names a product_id and a position")
        elif target != 1:
            raise ValueError(f"a {self.action.value} rule names either a product_id or a category")
        if (self.action == RuleAction.boost) != (self.weight is not None):
            raise ValueError("weight belongs to boost rules, and a boost needs one")
        if self.action != RuleAction.pin and self.position is not None:
            raise ValueError("position belongs to pin rules")
        return self


class RuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    action: RuleAction
    query: str | None
    product_id: str | None
    category: str | None
    position: int | None
    weight: float | None
    note: str
    created_by: uuid.UUID | None
    created_at: dt.datetime
