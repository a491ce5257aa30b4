from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from services.api.schemas import reject_nulls
from shared.models.enums import TaskPriority, TaskStatus

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class _TaskFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=50_000)
    assignee_id: uuid.UUID | None = Field(default=None, description="Must be a member of the project.")
    milestone_id: uuid.UUID | None = None
    priority: TaskPriority | None = None
    due_date: dt.date | None = None
    estimate_hours: float | None = Field(default=None, ge=0, le=10_000)
    labels: list[Label] | None = Field(default=None, max_length=20)
    dataset_id: uuid.UUID | None = None
    training_job_id: uuid.UUID | None = None
    model_version_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(label.lower() for label in labels)) if labels is not None else None


class TaskCreate(_TaskFields):
    title: str = Field(min_length=1, max_length=300)


class TaskUpdate(_TaskFields):
    title: str | None = Field(default=None, min_length=1, max_length=300)
    status: TaskStatus | None = Field(
        default=None, description="todo -> in_progress -> in_review -> done, plus blocked; others answer 409."
    )

    @model_validator(mode="after")
    def _no_nulls_for_required(self) -> Self:
        reject_nulls(self, ("title", "description", "status", "priority", "labels"))
        return self


class TaskRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    number: int = Field(description="The project's n-th task: commits name it RF-<number>.")
    milestone_id: uuid.UUID | None
    title: str
    description: str
    status: TaskStatus
    priority: TaskPriority
    assignee_id: uuid.UUID | None
    due_date: dt.date | None
    estimate_hours: float | None
    labels: list[str]
    dataset_id: uuid.UUID | None
    training_job_id: uuid.UUID | None
    model_version_id: uuid.UUID | None
    deployment_id: uuid.UUID | None
    created_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None


class CommentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=20_000)


class CommentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    task_id: uuid.UUID
    author_id: uuid.UUID | None
    body: str
    created_at: dt.datetime
