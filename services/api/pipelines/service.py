"""Pipelines: saved (validated against the project's data when saved, not at run time), paused,
resumed, run by hand; their runs read, approved and rejected. The runs themselves are moved on by the
controller (services.api.pipelines.controller)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from croniter import CroniterError, croniter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.pagination import Page, decode_time_cursor, time_cursor
from services.api.pipelines import repository
from services.api.pipelines.gate import gate_metrics
from services.api.pipelines.schemas import (
    PipelineCreate,
    PipelineRead,
    PipelineUpdate,
    RunRead,
    TrainingSpec,
)
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action, allows
from services.api.schemas import snapshot
from services.api.training import repository as training_repository
from shared.config import Settings
from shared.errors import Conflict, Forbidden, NotFound, ValidationFailed
from shared.models import Milestone, Pipeline, PipelineRun
from shared.models.enums import (
    DatasetKind,
    DeploymentRole,
    JobType,
    PipelineStatus,
    ProjectRole,
    RunStatus,
)
from shared.models.pipelines import ACTIVE_RUN
from shared.training import EVALUATES_ON, TASK_OF, TRAINS_ON, base_model_problem

FIELDS = (
    "name", "description", "role", "status", "triggers", "training", "gate", "rollout", "require_approval",
    "approver_role", "owner_id", "milestone_id",
)  # fmt: skip
ROLE_OF_JOB = {
    JobType.bi_encoder: DeploymentRole.retriever,
    JobType.cross_encoder: DeploymentRole.reranker,
    JobType.classifier: DeploymentRole.classifier,
}
MAX_PIPELINES = 50
RANK = {ProjectRole.viewer: 0, ProjectRole.member: 1, ProjectRole.maintainer: 2, ProjectRole.owner: 3}


def _invalid(field: str, message: str) -> ValidationFailed:
    loc = ["body", *field.split(".")]
    return ValidationFailed(f"{field}: {message}", detail=[{"loc": loc, "msg": message}])


def to_read(pipeline: Pipeline, now: dt.datetime | None = None) -> PipelineRead:
    read = PipelineRead.model_validate(pipeline)
    cron = read.triggers.cron
    if cron and pipeline.status == PipelineStatus.active.value:
        read.next_cron_tick = croniter(cron, now or dt.datetime.now(dt.UTC)).get_next(dt.datetime)
    return read


def roles_at_least(role: ProjectRole) -> tuple[str, ...]:
    return tuple(r.value for r, rank in RANK.items() if rank >= RANK[role])


async def _training_source(
    session: AsyncSession, ctx: ProjectContext, training: TrainingSpec
) -> tuple[uuid.UUID | None, str | None]:
    """(dataset id, kind) of the training data named by version or by name; checks both."""
    allowed = TRAINS_ON[JobType(training.job_type)]
    if training.dataset_version_id is not None:
        found = await training_repository.dataset_version_in_project(
            session, training.dataset_version_id, ctx.project.id
        )
        if found is None:
            raise _invalid("training.dataset_version_id", "no such dataset version in this project")
        kind = found[1].kind
        if DatasetKind(kind) not in allowed:
            raise _invalid("training.dataset_version_id", _kind_words(training.job_type, allowed, kind))
        return found[1].id, kind
    if training.dataset is not None:
        dataset = await repository.dataset_by_name(session, ctx.project.id, training.dataset)
        if dataset is None:
            raise _invalid("training.dataset", f"no dataset named {training.dataset!r} in this project")
        if DatasetKind(dataset.kind) not in allowed:
            raise _invalid("training.dataset", _kind_words(training.job_type, allowed, dataset.kind))
        return dataset.id, dataset.kind
    return None, None


def _kind_words(job_type: JobType, allowed: frozenset[DatasetKind], kind: str) -> str:
    names = " or ".join(sorted(k.value for k in allowed))
    return f"a {job_type.value} trains on {names} data, not {kind}"


async def validate(
    session: AsyncSession,
    settings: Settings,
    ctx: ProjectContext,
    role: DeploymentRole,
    values: dict[str, Any],
) -> None:
    """Everything a run would need, checked now: a pipeline that saves can run."""
    training = TrainingSpec.model_validate(values["training"])
    job_type = JobType(training.job_type)
    if ROLE_OF_JOB[job_type] != role:
        raise _invalid(
            "training.job_type", f"a {role.value} is trained by {_job_of(role)} jobs, not {job_type}"
        )
    if training.base_model is not None:
        problem = base_model_problem(training.base_model, settings.model_root_paths, settings.data_dir)
        if problem is not None:
            raise _invalid("training.base_model", problem)
    source_dataset, _ = await _training_source(session, ctx, training)
    if training.feedback is not None and job_type == JobType.classifier:
        raise _invalid(
            "training.feedback", "feedback makes relevance data: it trains retrievers and rerankers"
        )
    triggers = values.get("triggers") or {}
    cron = triggers.get("cron")
    if cron is not None:
        _check_cron(cron)
    watched = triggers.get("dataset")
    if watched is not None and await repository.dataset_by_name(session, ctx.project.id, watched) is None:
        raise _invalid("triggers.dataset", f"no dataset named {watched!r} in this project")
    gate = values.get("gate")
    if gate:
        golden_id = uuid.UUID(str(gate["golden_dataset_version_id"]))
        found = await training_repository.dataset_version_in_project(session, golden_id, ctx.project.id)
        if found is None:
            raise _invalid("gate.golden_dataset_version_id", "no such dataset version in this project")
        dataset = found[1]
        task = TASK_OF[job_type]
        kind = DatasetKind(dataset.kind)
        if kind not in EVALUATES_ON[task]:
            raise _invalid(
                "gate.golden_dataset_version_id",
                f"a {task.value} is scored on {' or '.join(sorted(k.value for k in EVALUATES_ON[task]))} "
                f"data, not {kind.value}",
            )
        if dataset.id == source_dataset or (training.feedback and dataset.name == training.feedback.name):
            raise _invalid(
                "gate.golden_dataset_version_id",
                "the golden set must be data training never sees: it is a version of the training dataset",
            )
        produced = gate_metrics(task, kind)
        for index, rule in enumerate(gate["rules"]):
            if rule["metric"] not in produced:
                raise _invalid(
                    f"gate.rules.{index}.metric",
                    f"{kind.value} data scores a {task.value} by {', '.join(sorted(produced))}; "
                    f"it cannot give {rule['metric']}",
                )
    rollout = values.get("rollout") or {}
    if role == DeploymentRole.classifier and int(rollout.get("canary_percent", 10)) > 0:
        raise _invalid(
            "rollout.canary_percent",
            "classifiers have no online metrics to judge a canary by: set canary_percent to 0",
        )
    milestone_id = values.get("milestone_id")
    if milestone_id is not None:
        milestone = await session.get(Milestone, milestone_id)
        if milestone is None or milestone.project_id != ctx.project.id:
            raise _invalid("milestone_id", "no such milestone in this project")


def _check_cron(cron: str) -> None:
    words = (
        "is not a cron schedule of five fields (minute hour day-of-month month day-of-week), e.g. 0 3 * * *"
    )
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise _invalid("triggers.cron", f"{cron!r} {words}")
    try:
        now = dt.datetime.now(dt.UTC)
        croniter(cron, now).get_next(dt.datetime)
        croniter(cron, now).get_prev(dt.datetime)
    except (CroniterError, ValueError, OverflowError):
        raise _invalid("triggers.cron", f"{cron!r} never comes (a day no month has?)") from None


def _job_of(role: DeploymentRole) -> str:
    return next(job.value for job, r in ROLE_OF_JOB.items() if r == role)


async def _check_owner(session: AsyncSession, ctx: ProjectContext, owner_id: uuid.UUID) -> None:
    role = await projects_repository.member_role(session, ctx.project.id, owner_id)
    if role is None or not allows(ProjectRole(role), Action.deploy):
        mine = owner_id == ctx.principal.user_id
        raise Forbidden(
            "a pipeline promotes versions in its owner's name, and "
            + ("your role in this project" if mine else "that member's role")
            + f" ({role or 'none'}) may not promote: a maintainer or the owner must own it (owner_id)"
        )


def _dumped(data: PipelineCreate | PipelineUpdate, names: set[str]) -> dict[str, Any]:
    return data.model_dump(mode="json", include=names, exclude_unset=isinstance(data, PipelineUpdate))


async def create(
    session: AsyncSession, settings: Settings, ctx: ProjectContext, data: PipelineCreate
) -> PipelineRead:
    ctx.require(Action.run_jobs)
    await _check_owner(session, ctx, ctx.principal.user_id)
    if len(await repository.list_pipelines(session, ctx.project.id)) >= MAX_PIPELINES:
        raise Conflict(f"a project has at most {MAX_PIPELINES} pipelines; delete one first")
    values = data.model_dump(mode="json")
    await validate(session, settings, ctx, data.role, values)
    if await repository.by_name(session, ctx.project.id, data.name) is not None:
        raise Conflict(f"the project has a pipeline named {data.name!r} already")
    pipeline = Pipeline(
        project_id=ctx.project.id,
        owner_id=ctx.principal.user_id,
        created_by=ctx.principal.user_id,
        **{**values, "gate": values["gate"] or {}},
    )
    try:
        async with session.begin_nested():
            session.add(pipeline)
    except IntegrityError:
        raise Conflict(f"the project has a pipeline named {data.name!r} already") from None
    await session.refresh(pipeline)
    await audit_change(
        session, ctx, "pipeline.create", "pipeline", pipeline.id, None, snapshot(pipeline, FIELDS)
    )
    return to_read(pipeline)


async def load(
    session: AsyncSession, principal: Principal, pipeline_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, Pipeline]:
    return await load_entity(session, principal, Pipeline, pipeline_id, "pipeline", for_update=for_update)


async def list_pipelines(session: AsyncSession, ctx: ProjectContext) -> list[PipelineRead]:
    now = dt.datetime.now(dt.UTC)
    return [to_read(p, now) for p in await repository.list_pipelines(session, ctx.project.id)]


async def update(
    session: AsyncSession, settings: Settings, ctx: ProjectContext, pipeline: Pipeline, data: PipelineUpdate
) -> PipelineRead:
    ctx.require(Action.run_jobs)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if not changes:
        return to_read(pipeline)
    required = ("name", "description", "triggers", "training", "rollout", "require_approval", "approver_role")
    for name in (*required, "owner_id"):
        if name in changes and changes[name] is None:
            raise _invalid(name, "may not be null")
    before = snapshot(pipeline, FIELDS)
    merged = {**{name: getattr(pipeline, name) for name in FIELDS}, **changes}
    await validate(session, settings, ctx, DeploymentRole(pipeline.role), merged)
    await _check_owner(session, ctx, ctx.principal.user_id)  # who changes what it promotes answers for it
    if "owner_id" in changes:
        await _check_owner(session, ctx, uuid.UUID(str(changes["owner_id"])))
    renamed = "name" in changes and changes["name"] != pipeline.name
    if renamed and await repository.by_name(session, ctx.project.id, changes["name"]) is not None:
        raise Conflict(f"the project has a pipeline named {changes['name']!r} already")
    for name, value in changes.items():
        setattr(pipeline, name, ({} if value is None else value) if name == "gate" else value)
    await session.flush()
    await session.refresh(pipeline)
    await audit_change(
        session, ctx, "pipeline.update", "pipeline", pipeline.id, before, snapshot(pipeline, FIELDS)
    )
    return to_read(pipeline)


async def set_status(
    session: AsyncSession, ctx: ProjectContext, pipeline: Pipeline, status: PipelineStatus
) -> PipelineRead:
    """Pause (no trigger fires; a run going on goes on) or resume (ticks missed while paused do not fire:
    the next one does)."""
    ctx.require(Action.run_jobs)
    if pipeline.status != status.value:
        before = snapshot(pipeline, FIELDS)
        pipeline.status = status.value
        await session.flush()
        await session.refresh(pipeline)
        verb = "pause" if status == PipelineStatus.paused else "resume"
        await audit_change(
            session, ctx, f"pipeline.{verb}", "pipeline", pipeline.id, before, snapshot(pipeline, FIELDS)
        )
    return to_read(pipeline)


async def delete(session: AsyncSession, ctx: ProjectContext, pipeline: Pipeline) -> None:
    ctx.require(Action.run_jobs)
    going = await repository.going_run(session, pipeline.id)
    if going is not None:
        raise Conflict(
            f"run #{going.number} of this pipeline is going ({going.status}): cancel it first "
            f"(POST /pipeline-runs/{going.id}/cancel)"
        )
    before = snapshot(pipeline, FIELDS)
    await session.delete(pipeline)
    await audit_change(session, ctx, "pipeline.delete", "pipeline", pipeline.id, before, None)


# -- runs -----------------------------------------------------------------------------------------


def run_read(run: PipelineRun) -> RunRead:
    return RunRead.model_validate(run)


async def load_run(
    session: AsyncSession, principal: Principal, run_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, PipelineRun]:
    return await load_entity(session, principal, PipelineRun, run_id, "pipeline run", for_update=for_update)


async def list_runs(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    pipeline_id: uuid.UUID | None,
    statuses: list[RunStatus] | None,
    cursor: str | None,
    limit: int,
) -> Page[RunRead]:
    rows = await repository.list_runs(
        session,
        ctx.project.id,
        pipeline_id=pipeline_id,
        statuses=[s.value for s in statuses] if statuses else None,
        before=decode_time_cursor(cursor),
        limit=limit,
    )
    page = rows[:limit]
    next_cursor = time_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page(items=[run_read(r) for r in page], next_cursor=next_cursor)


def require_approver(ctx: ProjectContext, pipeline: Pipeline) -> None:
    needed = ProjectRole(pipeline.approver_role)
    if ctx.principal.is_admin:
        return
    if ctx.role is None or RANK[ctx.role] < RANK[needed]:
        role = ctx.role.value if ctx.role else "none"
        raise Forbidden(
            f"this pipeline's runs are approved by a {needed.value} or above; your role is {role}"
        )


def ensure_going(run: PipelineRun, *, status: RunStatus | None = None) -> None:
    if run.status not in ACTIVE_RUN:
        raise Conflict(f"run #{run.number} has ended ({run.status}): {run.outcome or 'nothing to do'}")
    if status is not None and run.status != status.value:
        raise Conflict(f"run #{run.number} is not waiting for approval: it is {run.status} ({run.step})")


async def pipeline_of(session: AsyncSession, run: PipelineRun) -> Pipeline:
    pipeline = await session.get(Pipeline, run.pipeline_id)
    if pipeline is None:
        raise NotFound("pipeline not found")
    return pipeline


def require_run(ctx: ProjectContext) -> None:
    ctx.require(Action.run_jobs)
