from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.models.enums import JobStatus, JobType
from shared.training import Hyperparameters


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_type: JobType = Field(
        description="bi_encoder, cross_encoder, classifier (fine-tunes); "
        "evaluate, export, index (on a model version)."
    )
    dataset_version_id: uuid.UUID | None = Field(
        None,
        description="The data to train or evaluate on (required for fine-tunes and evaluate); for index, "
        "a version holding the catalog to embed (default: the project's latest catalog).",
    )
    input_model_version_id: uuid.UUID | None = Field(
        None, description="The version an evaluate, export or index job works on (not used by fine-tunes)."
    )
    base_model: str | None = Field(
        None, max_length=500, description="A local folder or hub id; default all-MiniLM-L6-v2 (fine-tunes)."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    priority: int = Field(5, ge=0, le=9, description="9 runs first, 0 last.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    compute_limit_hours: float = Field(
        1.0, gt=0, le=10_000, description="The most compute the job may use; reserved against the budget."
    )


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    job_type: JobType
    status: JobStatus
    dataset_version_id: uuid.UUID | None
    input_model_version_id: uuid.UUID | None
    base_model: str | None
    hyperparameters: dict[str, Any]
    priority: int
    progress: dict[str, Any] = Field(
        description="step, total_steps, epoch, loss, pairs_per_s, eta_s, phase (updated every ~2 s); "
        "phases ([{phase, at}], each phase as it began) and loss_curve ([[step, loss]], at most 200 points)."
    )
    error: str | None
    attempts: int
    retries: int
    worker_id: str | None
    device: str | None
    compute_limit_hours: float
    compute_seconds: float
    heartbeat_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None
    queued_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_by: uuid.UUID | None
    created_at: dt.datetime
    result: dict[str, Any] | None = Field(
        None,
        description="evaluate: metrics and baselines; export: the rebuilt graphs and their checks; "
        "index: the catalog embeddings written.",
    )
    model_version_ids: list[uuid.UUID] = Field(default_factory=list, description="What the job registered.")


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    version: int
    task_type: str
    status: str
    base_model: str
    training_job_id: uuid.UUID | None
    dataset_version_id: uuid.UUID | None
    parent_model_version_id: uuid.UUID | None
    hyperparameters: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    baselines: dict[str, Any]
    artifacts: dict[str, Any]
    library_versions: dict[str, Any]
    git_commit: str | None
    git: dict[str, Any] = Field(
        description="The code that trained it: commit, branch, remote (no credentials), dirty (uncommitted "
        "changes to tracked files; null where unknown)."
    )
    duration_s: float | None
    compute: dict[str, Any]
    promoted_at: dt.datetime | None
    created_at: dt.datetime
