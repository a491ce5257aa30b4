"""Project rules: creation, updates, status workflow, members (always one owner), progress, budgets."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change, record
from services.api.auth import repository as users_repository
from services.api.auth.service import revoke_service_keys
from services.api.context import Principal, ProjectContext
from services.api.pagination import Page, decode_time_cursor, time_cursor
from services.api.projects import repository
from services.api.projects.permissions import Action
from services.api.projects.schemas import (
    BestModel,
    Budget,
    BudgetRead,
    Goal,
    MemberAdd,
    MemberRead,
    MemberUpdate,
    MilestoneProgress,
    ProgressRead,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
    StatusCount,
    WorkProgress,
)
from services.api.schemas import snapshot
from shared.db import after_commit
from shared.errors import Conflict, Forbidden, NotFound, ValidationFailed
from shared.jobs import DEPLOYMENTS_CHANNEL
from shared.models import Project, ProjectMember, Task, User
from shared.models.enums import ProjectRole, ProjectStatus, TaskStatus

PROJECT_FIELDS = (
    "slug", "name", "description", "status", "owner_id", "goal_metric", "goal_operator", "goal_value",
    "start_date", "target_date", "budget_cpu_hours", "budget_gpu_hours", "max_concurrent_jobs",
    "impression_retention_days", "exploration_percent",
)  # fmt: skip

# proposed -> active -> paused <-> active -> done; archived is the end (done may reopen).
PROJECT_TRANSITIONS: dict[ProjectStatus, frozenset[ProjectStatus]] = {
    ProjectStatus.proposed: frozenset({ProjectStatus.active, ProjectStatus.archived}),
    ProjectStatus.active: frozenset({ProjectStatus.paused, ProjectStatus.done, ProjectStatus.archived}),
    ProjectStatus.paused: frozenset({ProjectStatus.active, ProjectStatus.done, ProjectStatus.archived}),
    ProjectStatus.done: frozenset({ProjectStatus.active, ProjectStatus.archived}),
    ProjectStatus.archived: frozenset(),
}


class BudgetExceeded(Conflict):
    error = "budget_exceeded"


def _given(budget: Budget, name: str, otherwise: float) -> float:
    """A budget field the request gave, else ``otherwise``."""
    return float(getattr(budget, name)) if name in budget.model_fields_set else otherwise


def _goal(project: Project) -> Goal | None:
    if project.goal_metric is None or project.goal_value is None:
        return None
    return Goal(metric=project.goal_metric, operator=project.goal_operator, value=project.goal_value)


def _budget(project: Project) -> BudgetRead:
    return BudgetRead(
        cpu_hours=project.budget_cpu_hours,
        gpu_hours=project.budget_gpu_hours,
        used_cpu_hours=project.used_cpu_hours,
        used_gpu_hours=project.used_gpu_hours,
        remaining_cpu_hours=max(0.0, project.budget_cpu_hours - project.used_cpu_hours),
        remaining_gpu_hours=max(0.0, project.budget_gpu_hours - project.used_gpu_hours),
    )


def to_read(project: Project, role: ProjectRole | str | None) -> ProjectRead:
    return ProjectRead(
        id=project.id,
        slug=project.slug,
        name=project.name,
        description=project.description,
        goal=_goal(project),
        status=ProjectStatus(project.status),
        owner_id=project.owner_id,
        start_date=project.start_date,
        target_date=project.target_date,
        budget=_budget(project),
        max_concurrent_jobs=project.max_concurrent_jobs,
        impression_retention_days=project.impression_retention_days,
        exploration_percent=project.exploration_percent,
        my_role=ProjectRole(role) if role else None,
        created_at=project.created_at,
        updated_at=project.updated_at,
    )


async def create_project(
    session: AsyncSession, principal: Principal, data: ProjectCreate, defaults: Budget
) -> ProjectRead:
    owner_id = principal.user_id
    if data.owner_id is not None and data.owner_id != principal.user_id:
        if not principal.is_admin:
            raise Forbidden("only admins may create a project for someone else")
        if await users_repository.get_user(session, data.owner_id) is None:
            raise ValidationFailed(
                "unknown owner", detail=[{"loc": ["body", "owner_id"], "msg": "no such user"}]
            )
        owner_id = data.owner_id
    if await repository.slug_taken(session, data.slug):
        raise Conflict(f"the slug {data.slug!r} is taken")
    project = Project(
        slug=data.slug,
        name=data.name,
        description=data.description,
        status=data.status.value,
        owner_id=owner_id,
        goal_metric=data.goal.metric.lower() if data.goal else None,
        goal_operator=data.goal.operator if data.goal else ">=",
        goal_value=data.goal.value if data.goal else None,
        start_date=data.start_date,
        target_date=data.target_date,
        budget_cpu_hours=_given(data.budget, "cpu_hours", defaults.cpu_hours),
        budget_gpu_hours=_given(data.budget, "gpu_hours", defaults.gpu_hours),
        max_concurrent_jobs=data.max_concurrent_jobs,
        impression_retention_days=data.impression_retention_days,
        exploration_percent=data.exploration_percent,
    )
    session.add(project)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create took the slug between check and insert
        raise Conflict(f"the slug {data.slug!r} is taken") from exc
    session.add(ProjectMember(project_id=project.id, user_id=owner_id, role=ProjectRole.owner.value))
    await session.flush()
    await session.refresh(project)
    await record(
        session,
        action="project.create",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        after=snapshot(project, PROJECT_FIELDS),
        request_id=principal.request_id,
        actor_user_id=principal.user_id,
        actor_key_id=principal.key_id,
    )
    role = ProjectRole.owner if owner_id == principal.user_id else None
    return to_read(project, role)


async def list_projects(
    session: AsyncSession,
    principal: Principal,
    *,
    status: ProjectStatus | None,
    cursor: str | None,
    limit: int,
) -> Page[ProjectRead]:
    after = decode_time_cursor(cursor)
    rows = await repository.list_projects(
        session,
        user_id=principal.user_id,
        members_only=not principal.is_admin,
        status=status.value if status else None,
        after=after,
        limit=limit + 1,
    )
    items = [to_read(p, role) for p, role in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = time_cursor(last.created_at, last.id)
    return Page(items=items, next_cursor=next_cursor)


async def update_project(
    session: AsyncSession, ctx: ProjectContext, data: ProjectUpdate, redis: Redis | None = None
) -> ProjectRead:
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return to_read(ctx.project, ctx.role)
    ctx.require(Action.update_project)
    project = ctx.project
    if "budget" in changes or "max_concurrent_jobs" in changes:
        ctx.require(Action.manage_budget)
    before = snapshot(project, PROJECT_FIELDS)
    if data.status is not None and data.status.value != project.status:
        current = ProjectStatus(project.status)
        if data.status not in PROJECT_TRANSITIONS[current]:
            allowed = sorted(s.value for s in PROJECT_TRANSITIONS[current]) or ["none"]
            raise Conflict(
                f"a project cannot go from {current.value} to {data.status.value}",
                detail={"from": current.value, "to": data.status.value, "allowed": allowed},
            )
        project.status = data.status.value
    start = changes.get("start_date", project.start_date)
    target = changes.get("target_date", project.target_date)
    if start and target and target < start:
        raise ValidationFailed(
            "target_date must not be before start_date",
            detail=[{"loc": ["body", "target_date"], "msg": "before start_date"}],
        )
    for name in (
        "name", "description", "start_date", "target_date", "max_concurrent_jobs",
        "impression_retention_days", "exploration_percent",
    ):  # fmt: skip
        if name in changes:
            setattr(project, name, changes[name])
    if redis is not None and changes.get("exploration_percent", project.exploration_percent) != before.get(
        "exploration_percent"
    ):
        message = json.dumps({"project_id": str(project.id), "exploration": True})

        async def notify() -> None:  # inference re-reads what it serves the project with
            await redis.publish(DEPLOYMENTS_CHANNEL, message)

        after_commit(session, notify)
    if "goal" in changes:
        goal = data.goal
        project.goal_metric = goal.metric.lower() if goal else None
        project.goal_operator = goal.operator if goal else ">="
        project.goal_value = goal.value if goal else None
    if data.budget is not None:
        project.budget_cpu_hours = _given(data.budget, "cpu_hours", project.budget_cpu_hours)
        project.budget_gpu_hours = _given(data.budget, "gpu_hours", project.budget_gpu_hours)
    await session.flush()
    await session.refresh(project)
    await audit_change(
        session, ctx, "project.update", "project", project.id, before, snapshot(project, PROJECT_FIELDS)
    )
    return to_read(project, ctx.role)


# -- members -----------------------------------------------------------------------------------


def _member_read(member: ProjectMember, user: User) -> MemberRead:
    return MemberRead(
        user_id=user.id,
        name=user.name,
        email=user.email,
        role=ProjectRole(member.role),
        created_at=member.created_at,
    )


async def list_members(session: AsyncSession, ctx: ProjectContext) -> list[MemberRead]:
    return [_member_read(m, u) for m, u in await repository.list_members(session, ctx.project.id)]


def _check_owner_rights(ctx: ProjectContext, *roles: ProjectRole | None) -> None:
    """Maintainers manage members, but only owners (and admins) grant, change or remove ownership."""
    if ProjectRole.owner in roles and not (ctx.principal.is_admin or ctx.role == ProjectRole.owner):
        raise Forbidden("only an owner may grant, change or remove the owner role")


async def add_member(session: AsyncSession, ctx: ProjectContext, data: MemberAdd) -> MemberRead:
    ctx.require(Action.manage_members)
    _check_owner_rights(ctx, data.role)
    user = await users_repository.get_user(session, data.user_id)
    if user is None:
        raise ValidationFailed("unknown user", detail=[{"loc": ["body", "user_id"], "msg": "no such user"}])
    await repository.lock_project(session, ctx.project.id)
    if await repository.get_member(session, ctx.project.id, user.id) is not None:
        raise Conflict("this user is already a member; change their role instead")
    member = ProjectMember(project_id=ctx.project.id, user_id=user.id, role=data.role.value)
    session.add(member)
    await session.flush()
    await session.refresh(member)
    await audit_change(
        session, ctx, "member.add", "member", user.id, None, {"user_id": str(user.id), "role": member.role}
    )
    return _member_read(member, user)


async def _load_member(
    session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID
) -> tuple[ProjectMember, User]:
    await repository.lock_project(session, ctx.project.id)
    member = await repository.get_member(session, ctx.project.id, user_id)
    user = await users_repository.get_user(session, user_id)
    if member is None or user is None:
        raise NotFound("no such member")
    return member, user


async def _ensure_an_owner_remains(session: AsyncSession, ctx: ProjectContext, leaving: uuid.UUID) -> None:
    owners = await repository.owners(session, ctx.project.id)
    remaining = [o for o in owners if o != leaving]
    if not remaining:
        raise Conflict("a project always keeps one owner: make someone else owner first")
    if ctx.project.owner_id == leaving:
        ctx.project.owner_id = remaining[0]


async def change_member(
    session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID, data: MemberUpdate
) -> MemberRead:
    ctx.require(Action.manage_members)
    member, user = await _load_member(session, ctx, user_id)
    current = ProjectRole(member.role)
    if current == data.role:
        return _member_read(member, user)
    _check_owner_rights(ctx, current, data.role)
    if current == ProjectRole.owner:
        await _ensure_an_owner_remains(session, ctx, user_id)
    member.role = data.role.value
    await session.flush()
    await audit_change(
        session, ctx, "member.update", "member", user_id, {"role": current.value}, {"role": member.role}
    )
    return _member_read(member, user)


async def remove_member(session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID) -> None:
    ctx.require(Action.manage_members)
    member, _ = await _load_member(session, ctx, user_id)
    role = ProjectRole(member.role)
    _check_owner_rights(ctx, role)
    if role == ProjectRole.owner:
        await _ensure_an_owner_remains(session, ctx, user_id)
    # Their tasks stay in the project, unassigned: an assignee must be a member.
    await session.execute(
        update(Task)
        .where(Task.project_id == ctx.project.id, Task.assignee_id == user_id)
        .values(assignee_id=None)
    )
    await session.delete(member)
    await session.flush()
    await audit_change(
        session, ctx, "member.remove", "member", user_id, {"user_id": str(user_id), "role": role.value}, None
    )
    # the service keys they issued for the project go with them: their storefronts get new keys
    await revoke_service_keys(session, ctx, user_id, "its user left the project")


# -- progress ----------------------------------------------------------------------------------


def _work(tasks: list[repository.TaskFigures], today: dt.date) -> dict[str, Any]:
    counts = StatusCount()
    total = done = 0.0
    unestimated = overdue = 0
    for task in tasks:
        setattr(counts, task.status, getattr(counts, task.status) + 1)
        if task.estimate_hours is None:
            unestimated += 1
        else:
            total += task.estimate_hours
            if task.status == TaskStatus.done.value:
                done += task.estimate_hours
        if task.due_date is not None and task.due_date < today and task.status != TaskStatus.done.value:
            overdue += 1
    return {
        "total_estimate_hours": total,
        "done_estimate_hours": done,
        "percent_done": round(100 * done / total, 2) if total > 0 else None,
        "tasks": counts,
        "unestimated_tasks": unestimated,
        "overdue_tasks": overdue,
    }


def _best_model(project: Project, versions: list[Any]) -> BestModel | None:
    goal = _goal(project)
    if goal is None:
        return None
    scored = []
    for version in versions:
        value = (version.metrics or {}).get(goal.metric)
        if isinstance(value, int | float):
            scored.append((float(value), version))
    if not scored:
        return None
    pick = max if goal.operator == ">=" else min
    value, version = pick(scored, key=lambda item: item[0])
    meets = value >= goal.value if goal.operator == ">=" else value <= goal.value
    return BestModel(
        model_version_id=version.id,
        version=version.version,
        metric=goal.metric,
        value=value,
        goal=goal,
        meets_goal=meets,
    )


async def progress(session: AsyncSession, ctx: ProjectContext, today: dt.date | None = None) -> ProgressRead:
    today = today or dt.date.today()
    project = ctx.project
    tasks = await repository.tasks_for_progress(session, project.id)
    milestones = await repository.milestones(session, project.id)
    per_milestone = []
    for milestone in milestones:
        mine = [t for t in tasks if t.milestone_id == milestone.id]
        work = _work(mine, today)
        per_milestone.append(
            MilestoneProgress(
                milestone_id=milestone.id,
                title=milestone.title,
                due_date=milestone.due_date,
                overdue=bool(
                    milestone.due_date
                    and milestone.due_date < today
                    and any(t.status != TaskStatus.done.value for t in mine)
                ),
                **work,
            )
        )
    jobs = await repository.job_counts(session, project.id)
    return ProgressRead(
        project_id=project.id,
        as_of=today,
        work=WorkProgress(**_work(tasks, today)),
        milestones=per_milestone,
        jobs_running=jobs.get("running", 0),
        jobs_queued=jobs.get("queued", 0),
        budget=_budget(project),
        best_model=_best_model(project, await repository.model_versions_with_metric(session, project.id)),
    )


# -- budget ------------------------------------------------------------------------------------


def ensure_budget(project: Project, device: str, job_hours: float, held_hours: float) -> None:
    """Refuse a job whose reservation (its compute_limit_hours) would take the project over its
    compute budget, beside what the project's queued and running jobs hold; say how to go on."""
    budget = _budget(project)
    gpu = device == "cuda"
    unit, name = ("GPU", "gpu_hours") if gpu else ("CPU", "cpu_hours")
    total, remaining = (
        (budget.gpu_hours, budget.remaining_gpu_hours)
        if gpu
        else (budget.cpu_hours, budget.remaining_cpu_hours)
    )
    if job_hours + held_hours <= remaining:
        return
    held = f", {held_hours:.2f} of them held by its queued and running jobs" if held_hours else ""
    flag = "--gpu-hours" if gpu else "--cpu-hours"
    raise BudgetExceeded(
        f"project {project.slug!r} has {remaining:.2f} of its {total:.2f} {unit}-hours left{held}, and "
        f"this job reserves {job_hours:.2f} (its compute_limit_hours). Raise the budget with "
        f"`recforge projects update {project.slug} {flag} N` (or PATCH /api/v1/projects/{project.slug} "
        f'with {{"budget": {{"{name}": N}}}}), or submit the job with a smaller compute_limit_hours.',
        detail={
            "resource": name,
            "compute_limit_hours": job_hours,
            "held_by_other_jobs": held_hours,
            "remaining": remaining,
        },
    )
