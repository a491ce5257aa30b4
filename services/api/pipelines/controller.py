"""The loop's controller: fires due triggers and moves each run still going one step on.

Every api replica runs one (``pipeline_controller``). Firing is exactly once per tick however many run:
a run's ``trigger_key`` (the cron tick, the dataset version, ...) is unique per pipeline, and the
pipeline row is locked while a tick is fired; a tick missed while everything was down fires once on
recovery, since only the latest due tick is ever considered. A run is advanced by the replica that
locks its row first (``FOR UPDATE SKIP LOCKED``); the others pass it by. Each step submits its work
with an Idempotency-Key of the run and step, so a step retried after a crash finds the job it made.

The loop acts in the name of the pipeline's owner: the jobs it submits, the versions it promotes and
the tasks it creates are theirs in the audit log, next to a ``pipeline_run.*`` row for every decision.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change, record
from services.api.context import Principal, ProjectContext
from services.api.deployments import service as deployments
from services.api.deployments.schemas import DeploymentRead, PromoteRequest
from services.api.deps import ApiResources
from services.api.feedback import service as feedback
from services.api.feedback.schemas import Bucket, FeedbackJobCreate, OnlineRole
from services.api.integrations import outbox as integrations
from services.api.pipelines import judge, repository, service
from services.api.pipelines.gate import judge_offline
from services.api.pipelines.schemas import GateSpec, RolloutSpec, TrainingSpec, Triggers
from services.api.projects import repository as projects_repository
from services.api.projects.service import BudgetExceeded
from services.api.schemas import snapshot
from services.api.training import repository as training_repository
from services.api.training import service as training
from services.api.training.schemas import JobCreate
from services.api.webhooks.service import emit
from shared.db import after_commit, unit_of_work
from shared.errors import AppError, Conflict, NotFound
from shared.jobs import pipeline_channel
from shared.models import AuditLog, Pipeline, PipelineRun, Project, Task, TrainingJob, User
from shared.models.enums import (
    JobStatus,
    JobType,
    KeyRole,
    PipelineStatus,
    ProjectRole,
    RunStatus,
    RunStep,
    TaskPriority,
    TaskStatus,
    TriggerKind,
    WebhookEvent,
)
from shared.models.pipelines import ACTIVE_RUN

log = logging.getLogger("recforge.pipelines")

MAX_ERRORS = 20  # ticks in a row a run may fail to move on before it ends failed
ENDED_JOB = {JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value}
TASK_FIELDS = ("title", "status", "priority", "assignee_id", "milestone_id", "model_version_id", "labels")


class RunEnded(Exception):
    """Raised by a step that ends the run."""

    def __init__(self, status: RunStatus, outcome: str) -> None:
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome


@dataclass
class Step:
    """What a step handler works with: one run, locked in this unit of work."""

    session: AsyncSession
    resources: ApiResources
    run: PipelineRun
    pipeline: Pipeline
    ctx: ProjectContext
    now: dt.datetime

    @property
    def links(self) -> dict[str, Any]:
        return dict(self.run.links or {})

    def link(self, **values: Any) -> None:
        self.run.links = {**(self.run.links or {}), **{k: _plain(v) for k, v in values.items()}}

    @property
    def spec(self) -> dict[str, Any]:
        return self.run.spec

    async def audit(self, action: str, after: dict[str, Any]) -> None:
        await record(
            self.session,
            action=f"pipeline_run.{action}",
            entity_type="pipeline_run",
            entity_id=self.run.id,
            project_id=self.run.project_id,
            actor_user_id=self.pipeline.owner_id,
            actor_key_id=None,
            after={"pipeline_id": str(self.pipeline.id), "number": self.run.number, **_plain(after)},
            request_id=f"pipeline-run:{self.run.id}",
        )


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- steps ----------------------------------------------------------------------------------------


def begin(step: Step, name: RunStep, detail: str | None = None) -> None:
    """Close the step going on and start ``name``."""
    steps = [dict(s) for s in step.run.steps or []]
    when = step.now.isoformat()
    for entry in steps:
        if entry["status"] in ("running", "waiting"):
            entry["status"] = "succeeded"
        if entry.get("finished_at") is None:
            entry["finished_at"] = when
    steps.append({"name": name.value, "status": "running", "started_at": when, "detail": detail})
    step.run.steps = steps
    step.run.step = name.value


def note(step: Step, detail: str, status: str = "running") -> None:
    """Say what the step going on is doing (or waiting for)."""
    steps = [dict(s) for s in step.run.steps or []]
    if steps:
        steps[-1].update(detail=detail, status=status)
    step.run.steps = steps


def _first_step(spec: dict[str, Any]) -> RunStep:
    return RunStep.collect if spec["training"].get("feedback") else RunStep.train


def _after_train(spec: dict[str, Any]) -> RunStep:
    if spec.get("gate"):
        return RunStep.gate
    return _after_gate(spec)


def _after_gate(spec: dict[str, Any]) -> RunStep:
    if spec.get("require_approval"):
        return RunStep.approve
    return _after_approval(spec)


def _after_approval(spec: dict[str, Any]) -> RunStep:
    return (
        RunStep.canary if RolloutSpec.model_validate(spec["rollout"]).canary_percent > 0 else RunStep.promote
    )


async def _job(step: Step, job_id: str) -> TrainingJob:
    job = await step.session.get(TrainingJob, uuid.UUID(job_id))
    if job is None:
        raise RunEnded(RunStatus.failed, f"job {job_id} is gone")
    return job


async def _job_failed(step: Step, job: TrainingJob, what: str) -> RunEnded:
    await emit(
        step.session,
        step.run.project_id,
        WebhookEvent.job_failed,
        {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "job_id": job.id, "status": job.status,
         "error": job.error},
    )  # fmt: skip
    return RunEnded(RunStatus.failed, f"the {what} job {job.status}: {job.error or 'no error recorded'}")


async def _submit(step: Step, data: JobCreate, key: str) -> uuid.UUID:
    """Submit a job for the run (once per key); over the budget, the run is skipped with the reason."""
    try:
        submitted = await training.submit(step.session, step.resources, step.ctx, data, key)
    except BudgetExceeded as exc:
        raise await _budget(step, exc) from None
    return submitted.job.id


async def _budget(step: Step, exc: BudgetExceeded) -> RunEnded:
    await emit(
        step.session,
        step.run.project_id,
        WebhookEvent.budget_exhausted,
        {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "message": exc.message},
    )
    return RunEnded(RunStatus.skipped, f"skipped: the run would exceed the compute budget: {exc.message}")


async def collect(step: Step) -> bool:
    spec = TrainingSpec.model_validate(step.spec["training"])
    assert spec.feedback is not None
    job_id = step.links.get("feedback_job_id")
    if job_id is None:
        end = step.run.created_at
        base = await _fixed_data(step, spec) if spec.feedback.merge_base else None
        data = FeedbackJobCreate(
            **{"from": end - dt.timedelta(days=spec.feedback.days)},
            to=end,
            name=spec.feedback.name,
            base_dataset_version_id=base,
            min_impressions=spec.feedback.min_impressions,
        )
        try:
            submitted = await feedback.submit_feedback_job(
                step.session, step.resources, step.ctx, data, f"pipeline-run:{step.run.id}:collect"
            )
        except BudgetExceeded as exc:
            raise await _budget(step, exc) from None
        step.link(feedback_job_id=submitted.job.id)
        note(step, f"feedback job {submitted.job.id} over {spec.feedback.days:g} days")
        await step.audit("collect", {"feedback_job_id": submitted.job.id})
        return False
    job = await _job(step, job_id)
    if job.status not in ENDED_JOB:
        return False
    if job.status != JobStatus.succeeded.value:
        raise await _job_failed(step, job, "feedback")
    made = [v for v in (job.result or {}).get("dataset_versions", []) if v["kind"] == "relevance"]
    if not made:
        raise RunEnded(RunStatus.failed, "the feedback job wrote no relevance data")
    step.link(dataset_version_id=made[0]["dataset_version_id"])
    note(step, f"{made[0]['rows']} graded pairs in dataset version {made[0]['dataset_version_id']}")
    begin(step, RunStep.train)
    return True


async def _fixed_data(step: Step, spec: TrainingSpec) -> uuid.UUID:
    """The named version, or the latest of the named dataset."""
    if spec.dataset_version_id is not None:
        return spec.dataset_version_id
    assert spec.dataset is not None
    dataset = await repository.dataset_by_name(step.session, step.run.project_id, spec.dataset)
    latest = await repository.latest_version(step.session, dataset.id) if dataset else None
    if latest is None:
        raise RunEnded(RunStatus.failed, f"the dataset {spec.dataset!r} has no version to train on")
    return latest.id


async def train(step: Step) -> bool:
    spec = TrainingSpec.model_validate(step.spec["training"])
    job_id = step.links.get("training_job_id")
    if job_id is None:
        data_id = step.links.get("dataset_version_id")
        version = uuid.UUID(data_id) if data_id else await _fixed_data(step, spec)
        wanted = JobCreate(
            job_type=JobType(spec.job_type),
            dataset_version_id=version,
            base_model=spec.base_model,
            hyperparameters=spec.hyperparameters,
            compute_limit_hours=spec.compute_limit_hours,
        )
        made = await _submit(step, wanted, f"pipeline-run:{step.run.id}:train")
        step.link(training_job_id=made, dataset_version_id=version)
        note(step, f"{spec.job_type} job {made} on dataset version {version}")
        await step.audit("train", {"training_job_id": made, "dataset_version_id": version})
        return False
    job = await _job(step, job_id)
    if job.status not in ENDED_JOB:
        return False
    if job.status != JobStatus.succeeded.value:
        raise await _job_failed(step, job, "training")
    outputs = (await training_repository.outputs(step.session, [job.id])).get(job.id) or []
    if not outputs:
        raise RunEnded(RunStatus.failed, "the training job registered no model version")
    current = await repository.active_deployment(step.session, step.run.project_id, step.pipeline.role)
    step.link(
        candidate_version_id=outputs[0],
        production_version_id=current.model_version_id if current else None,
    )
    note(step, f"candidate model version {outputs[0]}")
    begin(step, _after_train(step.spec))
    return True


async def gate(step: Step) -> bool:
    spec = GateSpec.model_validate(step.spec["gate"])
    links = step.links
    candidate, production = links["candidate_version_id"], links.get("production_version_id")
    jobs: dict[str, str] = links.get("gate_job_ids") or {}
    if not jobs:
        arms = {"candidate": candidate, **({"production": production} if production else {})}
        for arm, version in arms.items():
            data = JobCreate(
                job_type=JobType.evaluate,
                dataset_version_id=spec.golden_dataset_version_id,
                input_model_version_id=uuid.UUID(version),
            )
            jobs[arm] = str(await _submit(step, data, f"pipeline-run:{step.run.id}:gate:{arm}"))
        step.link(gate_job_ids=jobs)
        note(step, f"scoring {' and '.join(jobs)} on golden set {spec.golden_dataset_version_id}")
        return False
    found = {arm: await _job(step, job_id) for arm, job_id in jobs.items()}
    if any(job.status not in ENDED_JOB for job in found.values()):
        return False
    for arm, job in found.items():
        if job.status != JobStatus.succeeded.value:
            raise await _job_failed(step, job, f"gate's {arm} evaluation")
    results = {arm: job.result or {} for arm, job in found.items()}
    verdict = judge_offline(
        spec,
        results["candidate"].get("metrics") or {},
        (results.get("production") or {}).get("metrics") if "production" in results else None,
        results["candidate"].get("baselines") or {},
    )
    step.run.gate = _plain(verdict.as_dict())
    await step.audit("gate", verdict.as_dict())
    if not verdict.passed:
        await _task_for_owner(
            step, f"Gate refused {step.pipeline.name} run #{step.run.number}", verdict.reason
        )
        await emit(
            step.session,
            step.run.project_id,
            WebhookEvent.gate_refused,
            {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "reason": verdict.reason,
             "candidate_version_id": candidate, "checks": verdict.checks},
        )  # fmt: skip
        raise RunEnded(RunStatus.refused, verdict.reason)
    note(step, verdict.reason)
    begin(step, _after_gate(step.spec))
    return True


async def approve(step: Step) -> bool:
    task_id = step.links.get("approval_task_id")
    if task_id is None:
        role = ProjectRole(step.pipeline.approver_role)
        assignee = await repository.least_loaded_member(
            step.session, step.run.project_id, service.roles_at_least(role)
        )
        candidate = step.links["candidate_version_id"]
        gate_said = (step.run.gate or {}).get("reason", "no offline gate")
        task = await _task(
            step,
            title=f"Approve {step.pipeline.name} run #{step.run.number}: model version {candidate}",
            description=(
                f"The pipeline {step.pipeline.name!r} trained a candidate and waits for a {role.value}'s "
                f"decision.\n\n{gate_said}\n\nApprove: move this task to done, or POST "
                f"/api/v1/pipeline-runs/{step.run.id}/approve. Reject: POST "
                f"/api/v1/pipeline-runs/{step.run.id}/reject."
            ),
            assignee=assignee,
            model_version_id=uuid.UUID(candidate),
            priority=TaskPriority.high,
        )
        step.link(approval_task_id=task.id)
        step.run.status = RunStatus.awaiting_approval.value
        note(step, f"waiting for task {task.id}", status="waiting")
        await step.audit("approval_requested", {"task_id": task.id, "assignee_id": assignee})
        await emit(
            step.session,
            step.run.project_id,
            WebhookEvent.approval_requested,
            {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "task_id": task.id,
             "assignee_id": assignee, "candidate_version_id": candidate},
        )  # fmt: skip
        return False
    waiting = await repository.get_task(step.session, uuid.UUID(task_id))
    if waiting is None:
        raise RunEnded(RunStatus.cancelled, "cancelled: the approval task was deleted")
    if waiting.status != TaskStatus.done.value:
        return False
    mover = await _who_closed(step.session, waiting.id)
    moved_by = (
        await projects_repository.member_role(step.session, step.run.project_id, mover) if mover else None
    )
    needed = ProjectRole(step.pipeline.approver_role)
    if moved_by is None or service.RANK[ProjectRole(moved_by)] < service.RANK[needed]:
        note(
            step,
            f"task {waiting.id} was moved to done by someone who may not approve (a {needed.value} or "
            "above approves): still waiting",
            status="waiting",
        )
        return False
    await approved(step, mover, f"approved by user {mover}: task {waiting.id} moved to done")
    return True


async def _who_closed(session: AsyncSession, task_id: uuid.UUID) -> uuid.UUID | None:
    """Who last moved the task to done, from the audit log."""
    query = (
        select(AuditLog.actor_user_id)
        .where(AuditLog.entity_type == "task", AuditLog.entity_id == str(task_id))
        .where(AuditLog.after["status"].astext == TaskStatus.done.value)
        .order_by(AuditLog.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def approved(step: Step, by: uuid.UUID | None, reason: str) -> None:
    step.run.status = RunStatus.running.value
    step.run.decided_by = by
    note(step, reason, status="succeeded")
    await step.audit("approve", {"reason": reason, "by": by})
    begin(step, _after_approval(step.spec))


async def canary(step: Step) -> bool:
    rollout = RolloutSpec.model_validate(step.spec["rollout"])
    candidate = uuid.UUID(step.links["candidate_version_id"])
    # production now, not when training ended: a person may have promoted another version meanwhile
    current = await repository.active_deployment(step.session, step.run.project_id, step.pipeline.role)
    production = current.model_version_id if current is not None else None
    step.link(production_version_id=production if production != candidate else None)
    if production is None or production == candidate:
        note(step, "no version in production: the candidate takes all traffic", status="skipped")
        begin(step, RunStep.promote)
        return True
    deployment = await deployments.promote(
        step.session,
        step.resources,
        step.ctx.principal,
        candidate,
        PromoteRequest(canary_percent=rollout.canary_percent),
    )
    step.link(deployment_ids=[*step.links.get("deployment_ids", []), deployment.id])
    step.run.canary_started_at = step.now
    step.run.status = RunStatus.canary.value
    note(step, f"serving {rollout.canary_percent}% of traffic")
    await step.audit("canary", {"deployment_id": deployment.id, "canary_percent": rollout.canary_percent})
    begin(step, RunStep.judge)
    return False  # the judge looks at the next tick, once traffic has come


async def arms(step: Step, k: int) -> tuple[judge.Arm, judge.Arm]:
    """(candidate, primary) online figures since the canary started."""
    assert step.run.canary_started_at is not None
    found = await feedback.online_metrics(
        step.session,
        step.ctx,
        step.resources.settings,
        role=OnlineRole(step.pipeline.role),
        start=step.run.canary_started_at,
        end=step.now,
        bucket=Bucket.day,
        k=k,
        version=None,
    )
    totals: dict[str, dict[str, float]] = {}
    for row in found.rows:
        arm = totals.setdefault(str(row.model_version_id), dict.fromkeys(
            ("requests", "clicks_at_k", "clicked", "carts", "purchases", "latency"), 0.0))  # fmt: skip
        arm["requests"] += row.requests
        arm["clicks_at_k"] += round(row.ctr_at_k * row.requests)
        arm["clicked"] += round((1 - row.zero_click_rate) * row.requests)
        arm["carts"] += round(row.cart_rate * row.requests)
        arm["purchases"] += round(row.purchase_rate * row.requests)
        arm["latency"] += row.latency_p99_ms * row.requests  # a requests-weighted mean of the days' p99

    def arm_of(version: str | None) -> judge.Arm:
        t = totals.get(str(version)) or {}
        requests = int(t.get("requests", 0))
        return judge.Arm(
            requests=requests,
            clicks_at_k=int(t.get("clicks_at_k", 0)),
            clicked_requests=int(t.get("clicked", 0)),
            carts=int(t.get("carts", 0)),
            purchases=int(t.get("purchases", 0)),
            latency_p99_ms=t.get("latency", 0.0) / requests if requests else 0.0,
        )

    return arm_of(step.links["candidate_version_id"]), arm_of(step.links["production_version_id"])


async def judge_step(step: Step) -> bool:
    rollout = RolloutSpec.model_validate(step.spec["rollout"])
    current = await repository.active_deployment(step.session, step.run.project_id, step.pipeline.role)
    candidate = step.links["candidate_version_id"]
    if current is None or str(current.canary_model_version_id) != candidate:
        raise RunEnded(
            RunStatus.cancelled,
            "cancelled: the canary no longer serves (the role's deployment was changed by hand)",
        )
    assert step.run.canary_started_at is not None
    elapsed = (step.now - step.run.canary_started_at).total_seconds()
    if elapsed <= 0:
        return False  # the canary began this tick: nothing served yet
    judged = dict(step.run.judge or {"looks": []})
    candidate_arm, primary_arm = await arms(step, rollout.k)
    verdict = await asyncio.to_thread(
        judge.look, rollout, candidate_arm, primary_arm, len(judged["looks"]), elapsed
    )
    judged["latest"] = {**verdict.figures, "decision": verdict.decision, "reason": verdict.reason,
                        "at": step.now.isoformat()}  # fmt: skip
    if "look" in verdict.figures:
        judged["looks"] = [*judged["looks"], judged["latest"]]
    step.run.judge = _plain(judged)
    if verdict.decision == "wait":
        note(step, verdict.reason)
        return False
    judged["decision"] = verdict.decision
    judged["reason"] = verdict.reason
    step.run.judge = _plain(judged)
    await step.audit("judge", {"decision": verdict.decision, "reason": verdict.reason, **verdict.figures})
    note(step, verdict.reason, status="succeeded")
    if verdict.decision == "promote":
        begin(step, RunStep.promote, verdict.reason)
    else:
        begin(step, RunStep.rollback, verdict.reason)
    return True


async def promote(step: Step) -> bool:
    candidate = uuid.UUID(step.links["candidate_version_id"])
    step.run.status = RunStatus.promoting.value
    deployment = await deployments.promote(
        step.session, step.resources, step.ctx.principal, candidate, PromoteRequest()
    )
    step.link(deployment_ids=[*step.links.get("deployment_ids", []), deployment.id])
    why = (step.run.judge or {}).get("reason") or (step.run.gate or {}).get("reason") or "no gate or canary"
    await step.audit(
        "promote", {"deployment_id": deployment.id, "model_version_id": candidate, "reason": why}
    )
    await emit(
        step.session,
        step.run.project_id,
        WebhookEvent.promoted,
        {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "model_version_id": candidate,
         "deployment_id": deployment.id, "reason": why},
    )  # fmt: skip
    raise RunEnded(RunStatus.promoted, f"promoted model version {candidate}: {why}")


async def rollback(step: Step) -> bool:
    production = uuid.UUID(step.links["production_version_id"])
    candidate = step.links["candidate_version_id"]
    why = (step.run.judge or {}).get("reason") or "rolled back"
    deployment = await take_canary_down(
        step.session, step.resources, step.ctx.principal, step.run, step.pipeline
    )
    if deployment is not None:
        production = deployment.model_version_id
        step.link(deployment_ids=[*step.links.get("deployment_ids", []), deployment.id])
    await step.audit(
        "rollback", {"model_version_id": candidate, "production_version_id": production, "reason": why}
    )
    await _task_for_owner(step, f"{step.pipeline.name} run #{step.run.number} rolled back", why)
    await emit(
        step.session,
        step.run.project_id,
        WebhookEvent.rolled_back,
        {"run_id": step.run.id, "pipeline_id": step.pipeline.id, "model_version_id": candidate,
         "production_version_id": production, "reason": why},
    )  # fmt: skip
    raise RunEnded(RunStatus.rolled_back, f"rolled back model version {candidate}: {why}")


async def take_canary_down(
    session: AsyncSession, resources: ApiResources, principal: Principal, run: PipelineRun, pipeline: Pipeline
) -> DeploymentRead | None:
    """Give all of the role's traffic back to the version serving beside the run's canary (whatever a
    person may have promoted meanwhile); nothing when the canary no longer serves."""
    current = await repository.active_deployment(session, run.project_id, pipeline.role)
    if current is None or str(current.canary_model_version_id) != (run.links or {}).get(
        "candidate_version_id"
    ):
        return None
    return await deployments.promote(
        session, resources, principal, current.model_version_id, PromoteRequest()
    )


HANDLERS = {
    RunStep.collect: collect,
    RunStep.train: train,
    RunStep.gate: gate,
    RunStep.approve: approve,
    RunStep.canary: canary,
    RunStep.judge: judge_step,
    RunStep.promote: promote,
    RunStep.rollback: rollback,
}


# -- tasks ----------------------------------------------------------------------------------------


async def _task(
    step: Step,
    *,
    title: str,
    description: str,
    assignee: uuid.UUID | None,
    model_version_id: uuid.UUID | None = None,
    priority: TaskPriority = TaskPriority.medium,
    status: TaskStatus = TaskStatus.todo,
) -> Task:
    task = Task(
        project_id=step.run.project_id,
        title=title[:300],
        description=description,
        status=status.value,
        priority=priority.value,
        assignee_id=assignee,
        milestone_id=step.pipeline.milestone_id,
        model_version_id=model_version_id,
        labels=["pipeline"],
        created_by=step.pipeline.owner_id,
    )
    step.session.add(task)
    await step.session.flush()
    await step.session.refresh(task)
    step.link(task_ids=[*step.links.get("task_ids", []), task.id])
    await record(
        step.session,
        action="task.create",
        entity_type="task",
        entity_id=task.id,
        project_id=step.run.project_id,
        actor_user_id=step.pipeline.owner_id,
        actor_key_id=None,
        after=_plain(snapshot(task, TASK_FIELDS)),
        request_id=f"pipeline-run:{step.run.id}",
    )
    await integrations.task_created(step.session, task)
    return task


async def _task_for_owner(step: Step, title: str, reason: str) -> None:
    links = "\n".join(f"- {name}: {value}" for name, value in sorted(step.links.items()) if value)
    candidate = step.links.get("candidate_version_id")
    await _task(
        step,
        title=title,
        description=f"{reason}\n\nRun {step.run.id} of pipeline {step.pipeline.name!r}.\n{links}",
        assignee=step.pipeline.owner_id,
        model_version_id=uuid.UUID(candidate) if candidate else None,
        priority=TaskPriority.high,
    )


async def _progress_task(step: Step, done: bool) -> None:
    """The run as a task of the pipeline's milestone, so the milestone's progress shows it."""
    if step.pipeline.milestone_id is None:
        return
    task_id = step.links.get("progress_task_id")
    if task_id is None and not done:
        task = await _task(
            step,
            title=f"{step.pipeline.name} run #{step.run.number}",
            description=f"Pipeline run {step.run.id}: GET /api/v1/pipeline-runs/{{run_id}} shows its steps.",
            assignee=step.pipeline.owner_id,
            status=TaskStatus.in_progress,
        )
        step.link(progress_task_id=task.id)
    elif task_id is not None and done:
        found = await repository.get_task(step.session, uuid.UUID(task_id))
        if found is not None and found.status != TaskStatus.done.value:
            found.status = TaskStatus.done.value
            found.completed_at = step.now
            found.description = f"{found.description}\n\n{step.run.outcome}"


# -- running --------------------------------------------------------------------------------------


def acting_principal(pipeline: Pipeline, run_id: uuid.UUID | None = None) -> Principal:
    return Principal(
        key_id=None,
        user_id=pipeline.owner_id,
        role=KeyRole.user,
        request_id=f"pipeline-run:{run_id}" if run_id else None,
    )


async def acting_context(
    session: AsyncSession, pipeline: Pipeline, run_id: uuid.UUID | None
) -> ProjectContext:
    project = await session.get(Project, pipeline.project_id)
    assert project is not None
    role = await projects_repository.member_role(session, project.id, pipeline.owner_id)
    if role is None:
        raise RunEnded(RunStatus.failed, "the pipeline's owner is no longer a member of the project")
    owner = await session.get(User, pipeline.owner_id)
    if owner is None or not owner.is_active:
        raise RunEnded(
            RunStatus.failed, "the pipeline's owner is deactivated: give the pipeline another owner"
        )
    return ProjectContext(
        project=project, role=ProjectRole(role), principal=acting_principal(pipeline, run_id)
    )


async def finish(step: Step, status: RunStatus, outcome: str) -> None:
    run = step.run
    run.status = status.value
    run.outcome = outcome
    run.finished_at = step.now
    steps = [dict(s) for s in run.steps or []]
    if steps and steps[-1]["status"] in ("running", "waiting"):
        ok = status in (RunStatus.promoted, RunStatus.rolled_back)
        steps[-1].update(
            status="succeeded" if ok else "failed", finished_at=step.now.isoformat(), detail=outcome
        )
    run.steps = steps
    if status != RunStatus.promoted:
        await _cancel_jobs(step)
    await _progress_task(step, done=True)
    await step.audit("finish", {"status": status.value, "outcome": outcome})
    await emit(
        step.session,
        run.project_id,
        WebhookEvent.run_finished,
        {"run_id": run.id, "pipeline_id": step.pipeline.id, "pipeline": step.pipeline.name,
         "number": run.number, "status": status.value, "outcome": outcome, "links": run.links,
         "steps": run.steps, "gate": run.gate, "judge": run.judge},
    )  # fmt: skip


async def _cancel_jobs(step: Step, ctx: ProjectContext | None = None) -> None:
    """Cancel the jobs the run started that are still queued or running (an arm of the gate whose other
    arm failed, say): their work would serve nothing. ``ctx``: who cancels (default: the pipeline)."""
    links = step.links
    ids = [
        links.get("feedback_job_id"),
        links.get("training_job_id"),
        *(links.get("gate_job_ids") or {}).values(),
    ]
    if ctx is None:
        project = await step.session.get(Project, step.run.project_id)
        assert project is not None
        ctx = ProjectContext(
            project=project, role=ProjectRole.owner, principal=acting_principal(step.pipeline, step.run.id)
        )
    for job_id in filter(None, ids):
        job = await step.session.get(TrainingJob, uuid.UUID(job_id), with_for_update=True)
        if job is not None and job.status not in ENDED_JOB and job.cancel_requested_at is None:
            await training.cancel(step.session, step.resources, ctx, job)


def publish(session: AsyncSession, resources: ApiResources, run: PipelineRun) -> None:
    """Tell the run's watchers (the runs' event stream) after the commit."""
    message = json.dumps({"run_id": str(run.id), "status": run.status, "step": run.step}, default=str)
    channel = pipeline_channel(run.project_id)
    redis = resources.redis

    async def send() -> None:
        await redis.publish(channel, message)

    after_commit(session, send)


async def advance(resources: ApiResources, run_id: uuid.UUID, now: dt.datetime | None = None) -> bool:
    """Move the run on as far as it goes now; False when another controller holds it or it has ended."""
    now = now or _now()
    try:
        async with unit_of_work(resources.sessionmaker) as session:
            run = await repository.lock_run_nowait(session, run_id)
            if run is None or run.status not in ACTIVE_RUN:
                return False
            pipeline = await session.get(Pipeline, run.pipeline_id)
            assert pipeline is not None
            try:
                ctx = await acting_context(session, pipeline, run.id)
                step = Step(session, resources, run, pipeline, ctx, now)
                while run.step is not None and await HANDLERS[RunStep(run.step)](step):
                    pass
            except RunEnded as ended:
                step = Step(session, resources, run, pipeline, _no_ctx(pipeline, run), now)
                await finish(step, ended.status, ended.outcome)
            publish(session, resources, run)
            return True
    except AppError as exc:  # a refusal by a service (a permission gone, data deleted): the run fails
        await _fail(resources, run_id, f"failed: {exc.message}", now)
        return True


def _no_ctx(pipeline: Pipeline, run: PipelineRun) -> ProjectContext:
    return ProjectContext(
        project=Project(id=run.project_id), role=None, principal=acting_principal(pipeline, run.id)
    )


async def _fail(resources: ApiResources, run_id: uuid.UUID, outcome: str, now: dt.datetime) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        run = await repository.lock_run_nowait(session, run_id)
        if run is None or run.status not in ACTIVE_RUN:
            return
        pipeline = await session.get(Pipeline, run.pipeline_id)
        assert pipeline is not None
        step = Step(session, resources, run, pipeline, _no_ctx(pipeline, run), now)
        await finish(step, RunStatus.failed, outcome)
        publish(session, resources, run)
    log.warning("pipeline run failed", extra={"run_id": str(run_id), "outcome": outcome})


# -- triggers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    trigger: TriggerKind
    key: str
    detail: str


async def due_triggers(
    session: AsyncSession, resources: ApiResources, pipeline: Pipeline, now: dt.datetime
) -> list[Due]:
    triggers = Triggers.model_validate(pipeline.triggers)
    due: list[Due] = []
    if triggers.cron:
        # ticks since the pipeline's last change (saved, edited, resumed): missed ones do not fire
        tick = croniter(triggers.cron, now).get_prev(dt.datetime)
        if tick >= pipeline.updated_at.replace(second=0, microsecond=0):
            due.append(
                Due(TriggerKind.cron, f"cron:{tick.isoformat()}", f"the cron tick of {tick.isoformat()}")
            )
    if await repository.going_run(session, pipeline.id) is not None:
        return due  # new data, events and drops wait for the run going: they stay due until it ends
    if triggers.dataset:
        dataset = await repository.dataset_by_name(session, pipeline.project_id, triggers.dataset)
        latest = await repository.latest_version(session, dataset.id) if dataset else None
        if latest is not None and latest.created_at > pipeline.created_at:
            due.append(
                Due(
                    TriggerKind.dataset,
                    f"dataset:{latest.id}",
                    f"version {latest.version} of {triggers.dataset}",
                )
            )
    if triggers.min_new_events:
        last = await repository.last_run(session, pipeline.id)
        since = last.created_at if last else pipeline.created_at
        count = await repository.events_since(session, pipeline.project_id, since)
        if count >= triggers.min_new_events:
            due.append(
                Due(
                    TriggerKind.events,
                    f"events:{last.id if last else 'first'}",
                    f"{count} new shopper events",
                )
            )
    if triggers.ctr_drop:
        found = await _ctr_drop(session, resources, pipeline, triggers, now)
        if found is not None:
            due.append(found)
    return due


async def _ctr_drop(
    session: AsyncSession, resources: ApiResources, pipeline: Pipeline, triggers: Triggers, now: dt.datetime
) -> Due | None:
    drop = triggers.ctr_drop
    assert drop is not None
    current = await repository.active_deployment(session, pipeline.project_id, pipeline.role)
    if current is None or pipeline.role == "classifier":
        return None
    since = await repository.in_production_since(
        session, pipeline.project_id, pipeline.role, current.model_version_id
    )
    baseline_end = since + dt.timedelta(days=drop.baseline_days) if since else None
    recent_start = now - dt.timedelta(hours=drop.window_hours)
    if since is None or baseline_end is None or baseline_end > recent_start:
        return None
    try:
        ctx = await acting_context(session, pipeline, None)
    except RunEnded:
        return None  # the owner is gone: runs would fail at once, and say why

    async def ctr(start: dt.datetime, end: dt.datetime) -> tuple[int, float]:
        found = await feedback.online_metrics(
            session, ctx, resources.settings, role=OnlineRole(pipeline.role), start=start, end=end,
            bucket=Bucket.day, k=drop.k, version=current.model_version_id,
        )  # fmt: skip
        requests = sum(row.requests for row in found.rows)
        clicks = sum(row.ctr_at_k * row.requests for row in found.rows)
        return requests, clicks / requests if requests else 0.0

    base_requests, base_ctr = await ctr(since, baseline_end)
    recent_requests, recent_ctr = await ctr(recent_start, now)
    if min(base_requests, recent_requests) < drop.min_requests or base_ctr <= 0:
        return None
    fell = 100 * (base_ctr - recent_ctr) / base_ctr
    if fell < drop.percent:
        return None
    return Due(
        TriggerKind.ctr_drop,
        f"ctr_drop:{current.model_version_id}:{now.date().isoformat()}",
        f"CTR@{drop.k} {recent_ctr:.4f} over the last {drop.window_hours:g} h is {fell:.1f}% below "
        f"{base_ctr:.4f} in its first {drop.baseline_days:g} days",
    )


async def fire(
    resources: ApiResources,
    pipeline_id: uuid.UUID,
    trigger: TriggerKind,
    key: str,
    detail: str,
    now: dt.datetime | None = None,
    *,
    refuse_overlap: bool = False,
) -> PipelineRun | None:
    """Start a run for the trigger, once per key. With another run going the tick is consumed by a
    skipped run that says so (or, for a manual run, refused with 409)."""
    now = now or _now()
    async with unit_of_work(resources.sessionmaker) as session:
        pipeline = await repository.lock_pipeline(session, pipeline_id)
        if pipeline is None:
            if refuse_overlap:
                raise NotFound("pipeline not found")
            return None
        paused = pipeline.status != PipelineStatus.active.value and trigger != TriggerKind.manual
        if paused or await repository.has_key(session, pipeline_id, key):
            return None
        going = await repository.going_run(session, pipeline_id)
        if going is not None and refuse_overlap:
            raise Conflict(
                f"run #{going.number} of this pipeline is still going ({going.status}, {going.step}); "
                "a pipeline runs one at a time"
            )
        spec = {name: getattr(pipeline, name) for name in ("training", "gate", "rollout", "require_approval")}
        run = PipelineRun(
            pipeline_id=pipeline.id,
            project_id=pipeline.project_id,
            number=await repository.next_number(session, pipeline_id),
            trigger=trigger.value,
            trigger_key=key,
            status=(RunStatus.running if going is None else RunStatus.skipped).value,
            spec=_plain(spec),
            links={},
            steps=[],
            created_at=now,
        )
        session.add(run)
        await session.flush()
        await session.refresh(run)
        ctx = _no_ctx(pipeline, run)
        step = Step(session, resources, run, pipeline, ctx, now)
        await step.audit("start" if going is None else "skip", {"trigger": trigger.value, "detail": detail})
        if going is not None:
            await finish(
                step, RunStatus.skipped, f"skipped: run #{going.number} of this pipeline was still going"
            )
        else:
            run.status = RunStatus.running.value
            begin(step, _first_step(spec), detail)
            await _progress_task(step, done=False)
            await emit(
                session,
                run.project_id,
                WebhookEvent.run_started,
                {"run_id": run.id, "pipeline_id": pipeline.id, "number": run.number, "trigger": trigger.value,
                 "detail": detail},
            )  # fmt: skip
        publish(session, resources, run)
        await session.flush()
        await session.refresh(run)  # readable once the unit of work has ended
        return run


async def schedule(resources: ApiResources, now: dt.datetime | None = None) -> list[PipelineRun]:
    """Fire every due trigger of every active pipeline; the runs started (or skipped)."""
    now = now or _now()
    async with resources.sessionmaker() as session:
        pipelines = await repository.active_pipelines(session)
    fired = []
    for pipeline in pipelines:
        try:
            async with unit_of_work(resources.sessionmaker) as session:
                due = await due_triggers(session, resources, pipeline, now)
            for found in due:
                run = await fire(resources, pipeline.id, found.trigger, found.key, found.detail, now)
                if run is not None:
                    fired.append(run)
        except Exception:
            log.warning("a pipeline's triggers could not be checked", extra={"pipeline_id": str(pipeline.id)},
                        exc_info=True)  # fmt: skip
    return fired


async def tick(resources: ApiResources, now: dt.datetime | None = None) -> None:
    """One pass: fire what is due, then move every run going one step on."""
    await schedule(resources, now)
    async with resources.sessionmaker() as session:
        going = await repository.going_run_ids(session)
    for run_id in going:
        try:
            await advance(resources, run_id, now)
        except Exception as exc:
            log.warning("a pipeline run could not be advanced", extra={"run_id": str(run_id)}, exc_info=True)
            await _count_error(resources, run_id, exc, now or _now())


async def _count_error(resources: ApiResources, run_id: uuid.UUID, exc: Exception, now: dt.datetime) -> None:
    """A run that failed to move on MAX_ERRORS ticks in a row for a reason no step foresaw (a database
    outage passes; a bug does not) ends failed, saying so, rather than trying forever."""
    try:
        async with unit_of_work(resources.sessionmaker) as session:
            run = await repository.lock_run_nowait(session, run_id)
            if run is None or run.status not in ACTIVE_RUN:
                return
            errors = int((run.links or {}).get("errors", 0)) + 1
            run.links = {**(run.links or {}), "errors": errors}
        if errors >= MAX_ERRORS:
            await _fail(resources, run_id, f"failed: the run could not move on {errors} times: "
                        f"{type(exc).__name__}: {str(exc)[:300]}", now)  # fmt: skip
    except Exception:
        log.warning("could not count a pipeline run's error", extra={"run_id": str(run_id)}, exc_info=True)


async def controller_loop(resources: ApiResources) -> None:
    every = resources.settings.pipeline_tick_s
    while True:
        try:
            await tick(resources)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("the pipeline controller's pass failed; the next one tries again", exc_info=True)
        await asyncio.sleep(every)


# -- people's decisions ---------------------------------------------------------------------------


async def decide(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    run: PipelineRun,
    *,
    approve: bool,
    reason: str,
) -> PipelineRun:
    """A person approves or rejects a run waiting for approval (its task is moved to done)."""
    pipeline = await service.pipeline_of(session, run)
    service.require_approver(ctx, pipeline)
    service.ensure_going(run, status=RunStatus.awaiting_approval)
    step = Step(session, resources, run, pipeline, _no_ctx(pipeline, run), _now())
    who = ctx.principal.user_id
    task_id = step.links.get("approval_task_id")
    task = await repository.get_task(session, uuid.UUID(task_id)) if task_id else None
    if task is not None and task.status != TaskStatus.done.value:
        task.status = TaskStatus.done.value
        task.completed_at = step.now
    said = f"{'approved' if approve else 'rejected'} by user {who}" + (f": {reason}" if reason else "")
    await audit_change(
        session, ctx, f"pipeline_run.{'approve' if approve else 'reject'}", "pipeline_run", run.id, None,
        {"reason": said, "task_id": task_id},
    )  # fmt: skip
    if approve:
        await approved(step, who, said)
    else:
        run.decided_by = who
        await finish(step, RunStatus.refused, said)
    publish(session, resources, run)
    await session.flush()
    await session.refresh(run)
    return run


async def cancel(
    session: AsyncSession, resources: ApiResources, ctx: ProjectContext, run: PipelineRun
) -> PipelineRun:
    """End a run going on: its unfinished jobs are cancelled and a canary it serves is taken down."""
    service.require_run(ctx)
    service.ensure_going(run)
    pipeline = await service.pipeline_of(session, run)
    step = Step(session, resources, run, pipeline, _no_ctx(pipeline, run), _now())
    await _cancel_jobs(step, ctx)  # in the name of who cancels the run
    if run.status == RunStatus.canary.value:
        await take_canary_down(session, resources, ctx.principal, run, pipeline)
    said = f"cancelled by user {ctx.principal.user_id}"
    await audit_change(session, ctx, "pipeline_run.cancel", "pipeline_run", run.id, None, {"reason": said})
    await finish(step, RunStatus.cancelled, said)
    publish(session, resources, run)
    await session.flush()
    await session.refresh(run)
    return run
