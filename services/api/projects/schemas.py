from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.api.schemas import reject_nulls
from shared.models.enums import ProjectRole, ProjectStatus
from shared.projects import as_id

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
SLUG_RULE = "lowercase letters, digits and dashes, 2-63 characters, not starting with a dash"


EXPLORATION = (
    "The share (percent) of searches whose top results inference shows in a random order. It costs those "
    "searches some relevance and lets feedback jobs tell how much shoppers favour a position from how "
    "much they favour a product; with 0 the click model cannot separate the two."
)


class Goal(BaseModel):
    """The business goal, e.g. NDCG@10 >= 0.90."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, max_length=64, examples=["ndcg@10"])
    operator: Literal[">=", "<="] = ">="
    value: float


class Budget(BaseModel):
    """Compute hours a project may use. On create, a field left out takes its default
    (RECFORGE_DEFAULT_CPU_HOURS, RECFORGE_DEFAULT_GPU_HOURS); on update, it keeps its value."""

    model_config = ConfigDict(extra="forbid")

    cpu_hours: float = Field(default=0, ge=0, le=1_000_000)
    gpu_hours: float = Field(default=0, ge=0, le=1_000_000)


class BudgetRead(Budget):
    used_cpu_hours: float
    used_gpu_hours: float
    remaining_cpu_hours: float
    remaining_gpu_hours: float


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(
        json_schema_extra={"pattern": SLUG_PATTERN},
        description=f"Unique; {SLUG_RULE}.",
    )
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    goal: Goal | None = None
    status: Literal[ProjectStatus.proposed, ProjectStatus.active] = ProjectStatus.proposed
    owner_id: uuid.UUID | None = Field(default=None, description="Admins only; default: the caller.")
    start_date: dt.date | None = None
    target_date: dt.date | None = None
    budget: Budget = Field(
        default_factory=Budget,
        description="Default: RECFORGE_DEFAULT_CPU_HOURS CPU-hours and RECFORGE_DEFAULT_GPU_HOURS GPU-hours.",
    )
    max_concurrent_jobs: int = Field(default=2, ge=1, le=64)
    impression_retention_days: int = Field(
        default=90, ge=1, le=3650, description="Days what inference served (impressions) is kept."
    )
    exploration_percent: float = Field(default=0.0, ge=0, le=50, description=EXPLORATION)

    @field_validator("slug")
    @classmethod
    def _not_an_id(cls, slug: str) -> str:
        if not re.fullmatch(SLUG_PATTERN, slug):
            raise ValueError(f"a slug is {SLUG_RULE} (e.g. shop-search); got {slug[:80]!r}")
        if as_id(slug) is not None:
            raise ValueError(
                "a slug may not read as a UUID: project ids and slugs name projects in the same URLs"
            )
        return slug

    @model_validator(mode="after")
    def _dates_ordered(self) -> Self:
        if self.start_date and self.target_date and self.target_date < self.start_date:
            raise ValueError("target_date must not be before start_date")
        return self


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    goal: Goal | None = None
    status: ProjectStatus | None = None
    start_date: dt.date | None = None
    target_date: dt.date | None = None
    budget: Budget | None = None
    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=64)
    impression_retention_days: int | None = Field(
        default=None, ge=1, le=3650, description="Days what inference served (impressions) is kept."
    )
    exploration_percent: float | None = Field(default=None, ge=0, le=50, description=EXPLORATION)

    @model_validator(mode="after")
    def _no_nulls_for_required(self) -> Self:
        reject_nulls(
            self,
            (
                "name",
                "description",
                "status",
                "budget",
                "max_concurrent_jobs",
                "impression_retention_days",
                "exploration_percent",
            ),
        )
        return self


class ProjectRead(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    goal: Goal | None
    status: ProjectStatus
    owner_id: uuid.UUID
    start_date: dt.date | None
    target_date: dt.date | None
    budget: BudgetRead
    max_concurrent_jobs: int
    impression_retention_days: int
    exploration_percent: float
    my_role: ProjectRole | None = Field(description="The caller's role; null for admins who are not members.")
    created_at: dt.datetime
    updated_at: dt.datetime


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID
    role: ProjectRole = ProjectRole.member


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: ProjectRole


class MemberRead(BaseModel):
    user_id: uuid.UUID
    name: str
    email: str
    role: ProjectRole
    created_at: dt.datetime


class StatusCount(BaseModel):
    todo: int = 0
    in_progress: int = 0
    in_review: int = 0
    done: int = 0
    blocked: int = 0


class WorkProgress(BaseModel):
    total_estimate_hours: float
    done_estimate_hours: float
    percent_done: float | None = Field(
        description="done / total estimate, in %; null when nothing is estimated"
    )
    tasks: StatusCount
    unestimated_tasks: int
    overdue_tasks: int


class MilestoneProgress(WorkProgress):
    milestone_id: uuid.UUID
    title: str
    due_date: dt.date | None
    overdue: bool


class BestModel(BaseModel):
    model_version_id: uuid.UUID
    version: int
    metric: str
    value: float
    goal: Goal
    meets_goal: bool


class ProgressRead(BaseModel):
    project_id: uuid.UUID
    as_of: dt.date
    work: WorkProgress
    milestones: list[MilestoneProgress]
    jobs_running: int
    jobs_queued: int
    budget: BudgetRead
    best_model: BestModel | None = Field(description="The best model version on the goal's metric so far.")
