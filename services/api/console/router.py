"""The console's pages. Each one reads through the same services as the API, as the signed-in person,
so a page shows what that person's role may see and a form may do what their role may do: the
templates leave out controls a role lacks, and the services refuse the action anyway."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit import service as audit_service
from services.api.console import charts, repository, service
from services.api.console.web import (
    COOKIE,
    CSRF_REFUSED,
    LOGIN_COOKIE,
    PREFIX,
    Poster,
    User,
    back_to,
    clear_cookie,
    form_of,
    on_error_back_to,
    redirect,
    render,
    secured,
    set_cookie,
)
from services.api.context import ProjectContext, load_project_context
from services.api.datasets import service as datasets_service
from services.api.datasets.router import _parse_form
from services.api.datasets.upload import staged_upload
from services.api.deployments import service as deployments_service
from services.api.deployments.schemas import PromoteRequest
from services.api.deps import ResourcesDep, SessionDep
from services.api.feedback import service as feedback_service
from services.api.feedback.schemas import Bucket, OnlineRole
from services.api.labeling import service as labeling_service
from services.api.labeling.schemas import LabelCreate, QueueClose, QueueCreate, QueueRead
from services.api.milestones import service as milestones_service
from services.api.milestones.schemas import MilestoneCreate
from services.api.pagination import Page
from services.api.pipelines import controller
from services.api.pipelines import service as pipelines_service
from services.api.projects import service as projects_service
from services.api.projects.permissions import Action
from services.api.projects.schemas import Budget, MemberAdd, MemberUpdate, ProjectCreate
from services.api.streams import event_stream
from services.api.tasks import service as tasks_service
from services.api.tasks.schemas import TaskCreate, TaskRead, TaskUpdate
from services.api.tasks.service import TRANSITIONS
from services.api.training import repository as training_repository
from services.api.training import service as training_service
from services.api.training.schemas import JobCreate, JobRead, ModelVersionRead
from shared.db import abandon
from shared.errors import AppError, Forbidden, NotFound, ValidationFailed
from shared.jobs import progress_channel
from shared.models import Dataset as _Dataset
from shared.models import LabelingQueue
from shared.models.enums import (
    DatasetKind,
    JobStatus,
    JobType,
    LabelingPool,
    LabelingStatus,
    LabelingStrategy,
    ProjectRole,
    RunStatus,
    TaskStatus,
)
from shared.models.pipelines import ACTIVE_RUN

router = APIRouter(prefix=PREFIX, include_in_schema=False)
Form = TypeVar("Form", bound=BaseModel)

PAGE = 25  # rows per page of every long list
BOARD_COLUMN = 30  # tasks shown per board column; the column links to all of them
BOARD = [TaskStatus.todo, TaskStatus.in_progress, TaskStatus.in_review, TaskStatus.blocked, TaskStatus.done]
FINE_TUNES = [JobType.bi_encoder, JobType.cross_encoder, JobType.classifier]
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _can(ctx: ProjectContext) -> dict[str, bool]:
    return {action.value: ctx.can(action) for action in Action}


def _parse(model: type[Form], data: dict[str, Any]) -> Form:
    """A form's fields as the API's request model, or 422 naming each field that is not valid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [{"loc": list(map(str, e["loc"])), "msg": e["msg"]} for e in exc.errors()]
        raise ValidationFailed("some fields are not valid", detail=detail) from None


def _optional(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


async def _tasks_in(
    session: AsyncSession, ctx: ProjectContext, status: TaskStatus, cursor: str | None, limit: int
) -> Page[TaskRead]:
    """One board column's tasks, a page of them."""
    return await tasks_service.list_tasks(
        session, ctx, assignee=None, statuses=[status], label=None, due_before=None, milestone_id=None,
        cursor=cursor, limit=limit,
    )  # fmt: skip


def _project_page(
    request: Request, template: str, user: Any, ctx: ProjectContext, section: str, **context: Any
) -> Response:
    """A page of one project: its menu, and what the person's role may do there."""
    return render(request, template, user, ctx=ctx, can=_can(ctx), section=section, **context)


async def _project(session: AsyncSession, user: Any, ref: str) -> ProjectContext:
    return await load_project_context(session, user.principal, ref)


# -- sign in and out -----------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, session: SessionDep, resources: ResourcesDep) -> Response:
    already = await service.current(session, resources.settings, request.cookies.get(COOKIE))
    if already is not None:
        return redirect(request, PREFIX + "/")
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        title="Sign in",
        login_token=token,
        next=request.query_params.get("next", ""),
        error=None,
    )
    set_cookie(request, response, LOGIN_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
async def login(request: Request, session: SessionDep, resources: ResourcesDep) -> Response:
    form = await form_of(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    next_page = back_to({"back": form.get("next", "")}, PREFIX + "/")
    try:
        if not service.csrf_ok(expected, form.get("login_token")):
            raise ValidationFailed("the sign-in form is out of date: it was reloaded, please sign in again")
        token, expires = await service.sign_in(session, resources.settings, form.get("api_key", ""))
        if request.cookies.get(COOKIE):  # a browser signing in again: its previous session ends
            await service.sign_out(session, resources.settings, request.cookies[COOKIE])
    except AppError as exc:
        await abandon(session)
        fresh = secrets.token_urlsafe(24)
        response = render(
            request,
            "login.html",
            None,
            status_code=exc.status_code,
            title="Sign in",
            login_token=fresh,
            next=next_page,
            error=exc.message,
        )
        set_cookie(request, response, LOGIN_COOKIE, fresh, max_age=3600)
        return response
    response = redirect(request, next_page)
    max_age = int((expires - dt.datetime.now(dt.UTC)).total_seconds())
    set_cookie(request, response, COOKIE, token, max_age=max(max_age, 1))
    clear_cookie(request, response, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, resources: ResourcesDep, user: Poster) -> Response:
    await service.sign_out(session, resources.settings, user.token)
    response = redirect(request, PREFIX + "/login")
    clear_cookie(request, response, COOKIE)
    return response


# -- projects ------------------------------------------------------------------------------------


@router.get("/")
async def projects_page(
    request: Request, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    page = await projects_service.list_projects(
        session, user.principal, status=None, cursor=cursor, limit=PAGE
    )
    rows = []
    for project in page.items:
        ctx = await load_project_context(session, user.principal, str(project.id))
        rows.append({"project": project, "progress": await projects_service.progress(session, ctx)})
    return render(
        request,
        "projects.html",
        user,
        title="Projects",
        rows=rows,
        next_cursor=page.next_cursor,
        can_create=not user.principal.is_service,
    )


@router.post("/projects")
async def create_project(
    request: Request, session: SessionDep, resources: ResourcesDep, user: Poster
) -> Response:
    form = await form_of(request)
    on_error_back_to(request, PREFIX + "/")
    goal = None
    if _optional(form.get("goal_metric")):
        goal = {
            "metric": form["goal_metric"].strip(),
            "operator": form.get("goal_operator", ">="),
            "value": form.get("goal_value") or 0,
        }
    data = _parse(
        ProjectCreate,
        {
            "slug": form.get("slug", "").strip(),
            "name": form.get("name", "").strip(),
            "description": form.get("description", ""),
            "goal": goal,
            "status": form.get("status", "active"),
        },
    )
    settings = resources.settings
    defaults = Budget(cpu_hours=settings.default_cpu_hours, gpu_hours=settings.default_gpu_hours)
    project = await projects_service.create_project(session, user.principal, data, defaults)
    return redirect(request, f"{PREFIX}/projects/{project.slug}", f"Project {project.name} created.")


@router.get("/projects/{ref}")
async def project_page(request: Request, ref: str, session: SessionDep, user: User) -> Response:
    ctx = await _project(session, user, ref)
    progress = await projects_service.progress(session, ctx)
    members = await projects_service.list_members(session, ctx)
    names = {m.user_id: m.name for m in members}
    columns = []
    counts = progress.work.tasks.model_dump()
    for status in BOARD:
        page = await _tasks_in(session, ctx, status, None, BOARD_COLUMN)
        columns.append({"status": status, "tasks": page.items, "count": counts[status.value]})
    milestones = await milestones_service.list_milestones(session, ctx)
    spent = await repository.compute_spent(session, ctx.project.id)
    return _project_page(
        request,
        "project.html",
        user,
        ctx,
        "board",
        title=ctx.project.name,
        project=projects_service.to_read(ctx.project, ctx.role),
        progress=progress,
        columns=columns,
        statuses=[s.value for s in BOARD],
        allowed={s.value: sorted(t.value for t in TRANSITIONS[s]) for s in TaskStatus},
        members=members,
        names=names,
        milestones=milestones,
        roles=[r.value for r in ProjectRole],
        burn=_burn_chart(spent, ctx.project.created_at, progress.budget.cpu_hours, progress.budget.gpu_hours),
    )


def _burn_chart(
    spent: list[tuple[dt.datetime, str, float]], since: dt.datetime, cpu_budget: float, gpu_budget: float
) -> Any:
    """Compute used since the project began, as a step line per device, against each budget."""
    now = dt.datetime.now(dt.UTC)
    series: dict[str, charts.Series] = {}
    totals: dict[str, float] = {}
    for at, device, hours in spent:
        kind = "gpu" if device == "cuda" else "cpu"
        line = series.setdefault(kind, charts.Series(f"{kind.upper()} hours used", [(since, 0.0)]))
        line.points.append((at, round(totals.get(kind, 0.0), 4)))  # flat until the job's hours count
        totals[kind] = totals.get(kind, 0.0) + hours
        line.points.append((at, round(totals[kind], 4)))
    for kind, line in series.items():
        line.points.append((max(now, line.points[-1][0]), round(totals[kind], 4)))
    limits = [(cpu_budget, f"CPU budget {cpu_budget:g} h")]
    if gpu_budget:
        limits.append((gpu_budget, f"GPU budget {gpu_budget:g} h"))
    return charts.line_chart(
        list(series.values()),
        title="Compute used over time, against the budget",
        y_label="hours",
        limits=limits,
    )


@router.get("/projects/{ref}/tasks")
async def tasks_page(
    request: Request,
    ref: str,
    session: SessionDep,
    user: User,
    status: TaskStatus = TaskStatus.todo,
    cursor: str | None = None,
) -> Response:
    ctx = await _project(session, user, ref)
    page = await _tasks_in(session, ctx, status, cursor, PAGE * 4)
    members = await projects_service.list_members(session, ctx)
    return _project_page(
        request,
        "tasks.html",
        user,
        ctx,
        "board",
        title=f"{ctx.project.name}: {status.value.replace('_', ' ')}",
        status=status,
        tasks=page.items,
        next_cursor=page.next_cursor,
        statuses=[s.value for s in BOARD],
        names={m.user_id: m.name for m in members},
    )


@router.post("/projects/{ref}/tasks")
async def create_task(request: Request, ref: str, session: SessionDep, user: Poster) -> Response:
    form = await form_of(request)
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}"
    on_error_back_to(request, here)
    data = _parse(
        TaskCreate,
        {
            "title": form.get("title", "").strip(),
            "description": form.get("description") or None,
            "assignee_id": _optional(form.get("assignee_id")),
            "milestone_id": _optional(form.get("milestone_id")),
            "estimate_hours": _optional(form.get("estimate_hours")),
            "due_date": _optional(form.get("due_date")),
        },
    )
    task = await tasks_service.create(session, ctx, data)
    return redirect(request, here + "#board", f"Task “{task.title}” created.")


@router.post("/tasks/{task_id}/move")
async def move_task(request: Request, task_id: uuid.UUID, session: SessionDep, user: Poster) -> Response:
    form = await form_of(request)
    ctx, task = await tasks_service.load(session, user.principal, task_id, for_update=True)
    back = back_to(form, f"{PREFIX}/projects/{ctx.project.slug}#board")
    on_error_back_to(request, back)
    data = _parse(TaskUpdate, {"status": form.get("status", "")})
    moved = await tasks_service.update(session, ctx, task, data)
    return redirect(request, back, f"“{moved.title}” moved to {moved.status.value.replace('_', ' ')}.")


@router.post("/projects/{ref}/members")
async def add_member(request: Request, ref: str, session: SessionDep, user: Poster) -> Response:
    form = await form_of(request)
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}#members"
    on_error_back_to(request, here)
    who = form.get("user", "").strip()
    try:
        user_id = uuid.UUID(who)
    except ValueError:
        found = await repository.user_by_email(session, who) if "@" in who else None
        if found is None:
            raise ValidationFailed(
                f"no user with the email or id {who!r}: an admin adds people with `recforge users create`"
            ) from None
        user_id = found.id
    data = _parse(MemberAdd, {"user_id": user_id, "role": form.get("role", "member")})
    member = await projects_service.add_member(session, ctx, data)
    return redirect(request, here, f"{member.name} joined as {member.role.value}.")


@router.post("/projects/{ref}/members/{user_id}")
async def change_member(
    request: Request, ref: str, user_id: uuid.UUID, session: SessionDep, user: Poster
) -> Response:
    """A member's new role, or (role "remove") their leaving the project."""
    form = await form_of(request)
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}#members"
    on_error_back_to(request, here)
    if form.get("role") == "remove":
        await projects_service.remove_member(session, ctx, user_id)
        said = "Member removed; their tasks are unassigned."
    else:
        data = _parse(MemberUpdate, {"role": form.get("role", "")})
        member = await projects_service.change_member(session, ctx, user_id, data)
        said = f"{member.name} is now {member.role.value}."
    return redirect(request, here, said)


@router.post("/projects/{ref}/milestones")
async def add_milestone(request: Request, ref: str, session: SessionDep, user: Poster) -> Response:
    form = await form_of(request)
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}#milestones"
    on_error_back_to(request, here)
    data = _parse(
        MilestoneCreate, {"title": form.get("title", "").strip(), "due_date": _optional(form.get("due_date"))}
    )
    milestone = await milestones_service.create(session, ctx, data)
    return redirect(request, here, f"Milestone “{milestone.title}” added.")


@router.get("/projects/{ref}/audit")
async def audit_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    page = await audit_service.list_entries(session, ctx, cursor=cursor, limit=PAGE * 2)
    entries, next_cursor = page.items, page.next_cursor
    names = await repository.user_names(session, [e.actor_user_id for e in entries])
    return _project_page(
        request,
        "audit.html",
        user,
        ctx,
        "audit",
        title=f"{ctx.project.name}: audit log",
        entries=entries,
        names=names,
        next_cursor=next_cursor,
    )


# -- data ----------------------------------------------------------------------------------------


@router.get("/projects/{ref}/data")
async def data_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    datasets = await datasets_service.list_datasets(session, ctx, cursor=cursor, limit=PAGE)
    versions = {}
    for dataset in datasets.items:
        found = await datasets_service.dataset_context(session, user.principal, dataset.id)
        versions[dataset.id] = (
            await datasets_service.list_versions(session, found[1], cursor=None, limit=5)
        ).items
    imports = await datasets_service.list_imports(session, ctx, status=None, cursor=None, limit=10)
    return _project_page(
        request,
        "data.html",
        user,
        ctx,
        "data",
        title=f"{ctx.project.name}: data",
        datasets=datasets.items,
        versions=versions,
        next_cursor=datasets.next_cursor,
        imports=imports.items,
        kinds=[k.value for k in DatasetKind],
    )


@router.post("/projects/{ref}/data")
async def upload_data(
    request: Request, ref: str, session: SessionDep, resources: ResourcesDep, user: User
) -> Response:
    ctx = await _project(session, user, ref)
    ctx.require(Action.write_datasets)
    here = f"{PREFIX}/projects/{ctx.project.slug}/data"
    await session.commit()  # no connection held while the upload streams to disk and is checked
    on_error_back_to(request, here)
    async with staged_upload(request, resources.settings) as upload:
        # multipart: the CSRF token is a field of the form, checked before anything is imported
        if not service.csrf_ok(user.csrf_token, upload.fields.pop("csrf_token", None)):
            raise Forbidden(CSRF_REFUSED)
        result = await datasets_service.import_dataset(resources, ctx, upload, _parse_form(upload.fields))
    words = "stored as" if result.created else "was already stored as"
    return redirect(
        request,
        f"{PREFIX}/dataset-versions/{result.version_id}",
        f"{result.name} {words} version {result.version} ({result.rows:,} rows).",
    )


@router.get("/dataset-versions/{version_id}")
async def dataset_version_page(
    request: Request, version_id: uuid.UUID, session: SessionDep, user: User
) -> Response:
    ctx, version = await datasets_service.version_context(session, user.principal, version_id)
    dataset = await datasets_service.get_dataset(session, await session.get_one(_Dataset, version.dataset_id))
    try:
        report = await datasets_service.version_report(session, version)
    except NotFound:  # a version no import made: a labelling queue's labels, the feedback job's grades
        report = None
    return _project_page(
        request,
        "dataset_version.html",
        user,
        ctx,
        "data",
        title=f"{dataset.name} v{version.version}",
        dataset=dataset,
        version=version,
        stats=datasets_service.stats(version),
        report=report,
        lineage=await datasets_service.lineage(session, version),
    )


# -- training ------------------------------------------------------------------------------------


async def _dataset_choices(session: AsyncSession, ctx: ProjectContext, user: Any) -> list[dict[str, Any]]:
    """Every stored version of the project's datasets, newest first, for the job form."""
    choices = []
    page = await datasets_service.list_datasets(session, ctx, cursor=None, limit=100)
    for dataset in page.items:
        _, row = await datasets_service.dataset_context(session, user.principal, dataset.id)
        for version in (await datasets_service.list_versions(session, row, cursor=None, limit=10)).items:
            choices.append(
                {"id": version.id, "label": f"{dataset.name} v{version.version} ({dataset.kind.value})"}
            )
    return choices


@router.get("/projects/{ref}/training")
async def training_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    jobs = await training_service.list_jobs(
        session, ctx, statuses=None, job_type=None, cursor=cursor, limit=PAGE
    )
    return _project_page(
        request,
        "training.html",
        user,
        ctx,
        "training",
        title=f"{ctx.project.name}: training",
        jobs=jobs.items,
        next_cursor=jobs.next_cursor,
        job_types=[t.value for t in FINE_TUNES],
        datasets=await _dataset_choices(session, ctx, user) if ctx.can(Action.run_jobs) else [],
        default_base_model=DEFAULT_BASE_MODEL,
        idempotency_key=secrets.token_urlsafe(16),  # a form sent twice (a double click) queues one job
    )


@router.post("/projects/{ref}/training")
async def submit_job(
    request: Request, ref: str, session: SessionDep, resources: ResourcesDep, user: Poster
) -> Response:
    form = await form_of(request)
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}/training"
    on_error_back_to(request, here)
    hyperparameters: dict[str, Any] = {
        name: form[name]
        for name in ("epochs", "max_steps", "batch_size", "learning_rate")
        if _optional(form.get(name))
    }
    adapter = _optional(form.get("adapter"))
    if adapter in ("lora", "lora-query"):
        hyperparameters["adapter"] = "lora"
        hyperparameters["query_tower_only"] = adapter == "lora-query"
    elif adapter is not None:
        hyperparameters["adapter"] = adapter  # refused by the API's own check, in its words
    data = _parse(
        JobCreate,
        {
            "job_type": form.get("job_type", ""),
            "dataset_version_id": _optional(form.get("dataset_version_id")),
            "base_model": _optional(form.get("base_model")),
            "hyperparameters": hyperparameters,
            "compute_limit_hours": form.get("compute_limit_hours") or 1,
        },
    )
    submitted = await training_service.submit(
        session, resources, ctx, data, form.get("idempotency_key") or None
    )
    return redirect(request, f"{PREFIX}/jobs/{submitted.job.id}", "Job queued.")


def _loss_chart(job: JobRead) -> Any:
    curve = job.progress.get("loss_curve") or []
    points: list[tuple[float | dt.datetime, float]] = [(float(s), float(v)) for s, v in curve]
    return charts.line_chart(
        [charts.Series("loss", points)],
        title="Training loss by step",
        y_label="loss",
        x_label="step",
        chart_id="loss-chart",
    )


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: uuid.UUID, session: SessionDep, user: User) -> Response:
    ctx, row = await training_service.job_context(session, user.principal, job_id)
    job = await training_service.get(session, row)
    return _project_page(
        request,
        "job.html",
        user,
        ctx,
        "training",
        title=f"{job.job_type.value} job",
        job=job,
        loss=_loss_chart(job),
        ended=JobStatus(job.status) in training_service.TERMINAL,
        retryable=job.status in (JobStatus.failed, JobStatus.cancelled),
    )


@router.get("/jobs/{job_id}/loss")
async def job_loss(job_id: uuid.UUID, session: SessionDep, user: User) -> Response:
    """The loss chart alone: what the job page redraws as the job goes on."""
    _, row = await training_service.job_context(session, user.principal, job_id)
    return secured(HTMLResponse(str(_loss_chart(await training_service.get(session, row)))))


@router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request, job_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, user: User
) -> StreamingResponse:
    """The job page's live progress: the API's job stream, signed in by the session cookie."""
    _, row = await training_service.job_context(session, user.principal, job_id)

    async def current(fresh: AsyncSession) -> JobRead:
        found = await training_repository.get_job(fresh, job_id)
        if found is None:
            raise NotFound("training job not found")
        return await training_service.get(fresh, found)

    async def signed_out(fresh: AsyncSession) -> str | None:
        still = await service.current(fresh, resources.settings, user.token)
        return None if still is not None else "signed out of the console"

    return event_stream(
        request,
        resources,
        user.principal,
        also=signed_out,
        event="job",
        first=await training_service.get(session, row),
        channel=progress_channel(job_id),
        current=current,
        ended=lambda read: JobStatus(read.status) in training_service.TERMINAL,
        poll=f"{PREFIX}/jobs/{{id}}",
    )


@router.post("/jobs/{job_id}/{action}")
async def job_action(
    request: Request,
    job_id: uuid.UUID,
    action: str,
    session: SessionDep,
    resources: ResourcesDep,
    user: Poster,
) -> Response:
    here = f"{PREFIX}/jobs/{job_id}"
    on_error_back_to(request, here)
    if action not in ("cancel", "retry"):
        raise NotFound("no such action: cancel or retry")
    ctx, row = await training_service.job_context(session, user.principal, job_id, for_update=True)
    if action == "cancel":
        await training_service.cancel(session, resources, ctx, row)
    else:
        await training_service.retry(session, resources, ctx, row)
    return redirect(request, here, "Cancelling the job." if action == "cancel" else "Job queued again.")


# -- models --------------------------------------------------------------------------------------


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _headline(version: ModelVersionRead) -> list[str]:
    """The metrics a version's chart and row show: rates (0 to 1: NDCG, MRR, recall, accuracy, F1) that a
    baseline also has, in a set order; counts such as the number of queries are left to the table."""
    metrics = {k: v for k, v in _numbers(version.metrics).items() if 0.0 <= v <= 1.0}
    baselines = [_numbers(b) for b in version.baselines.values() if isinstance(b, dict)]
    shared = [m for m in metrics if any(m in b for b in baselines)]
    order = ["ndcg@10", "mrr@10", "recall@10", "catalog_ndcg@10", "accuracy", "macro_f1"]
    picked = [m for m in order if m in shared] + [m for m in shared if m not in order]
    return picked[:6] if picked else list(metrics)[:6]


def _baseline_chart(version: ModelVersionRead) -> Any:
    metrics = _numbers(version.metrics)
    groups = []
    for metric in _headline(version):
        bars = [(f"v{version.version}", metrics[metric])]
        for name, values in sorted(version.baselines.items()):
            if isinstance(values, dict) and metric in _numbers(values):
                bars.append((name.replace("_", "-"), _numbers(values)[metric]))
        groups.append((metric, bars))
    return charts.bar_chart(groups, title=f"Version {version.version}'s metrics beside each baseline")


@router.get("/projects/{ref}/models")
async def models_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    versions = await training_service.list_model_versions(
        session, ctx, task_type=None, status=None, cursor=cursor, limit=PAGE
    )
    deployments = await deployments_service.list_deployments(session, ctx, history=True)
    numbers = {v.id: v.version for v in versions.items}
    return _project_page(
        request,
        "models.html",
        user,
        ctx,
        "models",
        title=f"{ctx.project.name}: models",
        versions=versions.items,
        headline={v.id: _headline(v) for v in versions.items},
        numbers=_numbers,
        next_cursor=versions.next_cursor,
        deployments=deployments,
        version_numbers=numbers,
    )


@router.get("/model-versions/{version_id}")
async def model_version_page(
    request: Request, version_id: uuid.UUID, session: SessionDep, user: User
) -> Response:
    ctx, row = await training_service.model_version_context(session, user.principal, version_id)
    version = ModelVersionRead.model_validate(row)
    return _project_page(
        request,
        "model_version.html",
        user,
        ctx,
        "models",
        title=f"Model version {version.version}",
        version=version,
        chart=_baseline_chart(version),
        metrics=_numbers(version.metrics),
        baselines={k: _numbers(v) for k, v in version.baselines.items() if isinstance(v, dict)},
        promotable="model" in version.artifacts,
    )


@router.get("/projects/{ref}/compare")
async def compare_page(
    request: Request, ref: str, session: SessionDep, user: User, a: uuid.UUID, b: uuid.UUID
) -> Response:
    ctx = await _project(session, user, ref)
    pair = []
    for version_id in (a, b):
        other, row = await training_service.model_version_context(session, user.principal, version_id)
        if other.project.id != ctx.project.id:
            raise NotFound("model version not found")
        pair.append(ModelVersionRead.model_validate(row))
    left, right = (_numbers(v.metrics) for v in pair)
    rows = [
        {
            "metric": m,
            "a": left.get(m),
            "b": right.get(m),
            "diff": right[m] - left[m] if m in left and m in right else None,
        }
        for m in sorted(set(left) | set(right))
    ]
    return _project_page(
        request,
        "compare.html",
        user,
        ctx,
        "models",
        title=f"Version {pair[0].version} against version {pair[1].version}",
        a=pair[0],
        b=pair[1],
        rows=rows,
    )


@router.post("/model-versions/{version_id}/promote")
async def promote(
    request: Request, version_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, user: Poster
) -> Response:
    form = await form_of(request)
    here = f"{PREFIX}/model-versions/{version_id}"
    on_error_back_to(request, here)
    percent = _optional(form.get("canary_percent")) if form.get("mode") == "canary" else None
    data = _parse(PromoteRequest, {"canary_percent": percent})
    deployment = await deployments_service.promote(session, resources, user.principal, version_id, data)
    words = (
        f"serves {deployment.canary_percent}% of the {deployment.role.value}'s traffic as a canary"
        if deployment.canary_model_version_id
        else f"is the {deployment.role.value} in production"
    )
    return redirect(request, here, f"This version {words}.")


# -- the loop ------------------------------------------------------------------------------------


@router.get("/projects/{ref}/loop")
async def loop_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    pipelines = await pipelines_service.list_pipelines(session, ctx)
    runs = await pipelines_service.list_runs(
        session, ctx, pipeline_id=None, statuses=None, cursor=cursor, limit=PAGE
    )
    return _project_page(
        request,
        "loop.html",
        user,
        ctx,
        "loop",
        title=f"{ctx.project.name}: the loop",
        pipelines=pipelines,
        pipeline_names={p.id: p.name for p in pipelines},
        runs=runs.items,
        next_cursor=runs.next_cursor,
    )


@router.get("/pipeline-runs/{run_id}")
async def run_page(request: Request, run_id: uuid.UUID, session: SessionDep, user: User) -> Response:
    ctx, row = await pipelines_service.load_run(session, user.principal, run_id)
    pipeline = await pipelines_service.pipeline_of(session, row)
    run = pipelines_service.run_read(row)
    may_decide = True
    try:
        pipelines_service.require_approver(ctx, pipeline)
    except AppError:
        may_decide = False
    return _project_page(
        request,
        "run.html",
        user,
        ctx,
        "loop",
        title=f"{pipeline.name}: run {run.number}",
        run=run,
        pipeline=pipelines_service.to_read(pipeline),
        waiting=run.status == RunStatus.awaiting_approval and may_decide,
        going=run.status.value in ACTIVE_RUN,
    )


@router.post("/pipeline-runs/{run_id}/{decision}")
async def decide_run(
    request: Request,
    run_id: uuid.UUID,
    decision: str,
    session: SessionDep,
    resources: ResourcesDep,
    user: Poster,
) -> Response:
    form = await form_of(request)
    here = f"{PREFIX}/pipeline-runs/{run_id}"
    on_error_back_to(request, here)
    if decision not in ("approve", "reject", "cancel"):
        raise NotFound("no such decision: approve, reject or cancel")
    ctx, run = await pipelines_service.load_run(session, user.principal, run_id, for_update=True)
    if decision == "cancel":
        run = await controller.cancel(session, resources, ctx, run)
    else:
        run = await controller.decide(
            session,
            resources,
            ctx,
            run,
            approve=decision == "approve",
            reason=form.get("reason", "")[:500],
        )
    return redirect(request, here, f"Run {run.number}: {run.status.replace('_', ' ')}.")


# -- online --------------------------------------------------------------------------------------


@router.get("/projects/{ref}/online")
async def online_page(
    request: Request,
    ref: str,
    session: SessionDep,
    resources: ResourcesDep,
    user: User,
    role: OnlineRole = OnlineRole.retriever,
    bucket: Bucket = Bucket.day,
    days: int = 7,
) -> Response:
    ctx = await _project(session, user, ref)
    days = min(max(days, 1), 90)
    end = dt.datetime.now(dt.UTC)
    online = await feedback_service.online_metrics(
        session,
        ctx,
        resources.settings,
        role=role,
        start=end - dt.timedelta(days=days),
        end=end,
        bucket=bucket,
        k=10,
        version=None,
    )
    number = await repository.version_numbers(session, {r.model_version_id for r in online.rows})

    def label(version_id: uuid.UUID | None) -> str:
        return f"v{number[version_id]}" if version_id in number else "a deleted version"

    def lines(field: str) -> list[charts.Series]:
        series: dict[str, charts.Series] = {}
        for row in online.rows:
            name = label(row.model_version_id)
            series.setdefault(name, charts.Series(name)).points.append(
                (row.bucket, float(getattr(row, field)))
            )
        return list(series.values())

    return _project_page(
        request,
        "online.html",
        user,
        ctx,
        "online",
        title=f"{ctx.project.name}: online metrics",
        online=online,
        label=label,
        role=role.value,
        bucket=bucket.value,
        days=days,
        ctr=charts.line_chart(lines("ctr_at_k"), title="CTR@10 per version", y_label="clicks per request"),
        requests=charts.line_chart(
            lines("requests"), title="Requests answered per version", y_label="requests"
        ),
        latency=charts.line_chart(lines("latency_p99_ms"), title="p99 latency per version", y_label="ms"),
    )


# -- labelling -----------------------------------------------------------------------------------


def _grades(low: int, high: int) -> list[dict[str, Any]]:
    """A queue's scale as buttons: each grade, its key (grades 0 to 9 have one) and, at the ends, what
    it means."""
    return [
        {
            "grade": grade,
            "key": str(grade) if grade <= 9 else None,
            "word": "irrelevant" if grade == low else "exact match" if grade == high else "",
        }
        for grade in range(low, high + 1)
    ]


async def _relevance_choices(session: AsyncSession, ctx: ProjectContext, user: Any) -> list[dict[str, Any]]:
    """The project's relevance dataset versions, newest first: what a queue's pairs may come from."""
    choices = []
    page = await datasets_service.list_datasets(session, ctx, cursor=None, limit=100)
    for dataset in page.items:
        if dataset.kind != DatasetKind.relevance:
            continue
        _, row = await datasets_service.dataset_context(session, user.principal, dataset.id)
        for version in (await datasets_service.list_versions(session, row, cursor=None, limit=10)).items:
            choices.append({"id": version.id, "label": f"{dataset.name} v{version.version}"})
    return choices


@router.get("/projects/{ref}/labeling")
async def labeling_page(
    request: Request, ref: str, session: SessionDep, user: User, cursor: str | None = None
) -> Response:
    ctx = await _project(session, user, ref)
    page = await labeling_service.list_queues(session, ctx, cursor=cursor, limit=PAGE)
    queues: list[QueueRead] = []
    for listed in page.items:  # with each one's progress and agreement
        queues.append(await labeling_service.read(session, await session.get_one(LabelingQueue, listed.id)))
    may_create = ctx.can(Action.write_datasets) and ctx.can(Action.run_jobs)
    members = await projects_service.list_members(session, ctx) if may_create else []
    versions = [q.dataset_version_id for q in queues] + [q.pool_dataset_version_id for q in queues]
    return _project_page(
        request,
        "labeling.html",
        user,
        ctx,
        "labeling",
        title=f"{ctx.project.name}: labelling",
        queues=queues,
        next_cursor=page.next_cursor,
        me=user.principal.user_id,
        version_names=await repository.dataset_version_names(session, versions),
        may_create=may_create,
        pools=await _relevance_choices(session, ctx, user) if may_create else [],
        labellers=[m for m in members if m.role != ProjectRole.viewer],
        strategies=[s.value for s in LabelingStrategy],
    )


@router.post("/projects/{ref}/labeling")
async def create_queue(
    request: Request, ref: str, session: SessionDep, resources: ResourcesDep, user: Poster
) -> Response:
    form = await form_of(request)
    labellers = [v for v in (await request.form()).getlist("labellers") if isinstance(v, str) and v]
    ctx = await _project(session, user, ref)
    here = f"{PREFIX}/projects/{ctx.project.slug}/labeling"
    on_error_back_to(request, here)
    source = _optional(form.get("dataset_version_id"))
    from_searches = source == LabelingPool.impressions.value
    data = _parse(
        QueueCreate,
        {
            "name": form.get("name", "").strip(),
            "strategy": form.get("strategy", ""),
            "budget": form.get("budget", ""),
            "pool": LabelingPool.impressions.value if from_searches else LabelingPool.dataset.value,
            "dataset_version_id": None if from_searches else source,
            "labellers": labellers,
            "labels_per_item": form.get("labels_per_item") or 1,
        },
    )
    queue = await labeling_service.create(session, resources, ctx, data)
    return redirect(
        request,
        here,
        f"Queue “{queue.name}” is being built: a selection job picks its pairs, then it opens.",
    )


@router.post("/labeling-queues/{queue_id}/close")
async def close_queue(
    request: Request, queue_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, user: Poster
) -> Response:
    ctx, queue = await labeling_service.load(session, user.principal, queue_id, for_update=True)
    here = f"{PREFIX}/projects/{ctx.project.slug}/labeling"
    on_error_back_to(request, here)
    closed = await labeling_service.close(session, resources, ctx, queue, QueueClose())
    written = await repository.dataset_version_names(session, [closed.dataset_version_id])
    name = written.get(closed.dataset_version_id) if closed.dataset_version_id else None
    return redirect(request, here, f"Queue “{closed.name}” closed: its labels are {name or 'written'}.")


@router.get("/labeling-queues/{queue_id}/label")
async def label_page(request: Request, queue_id: uuid.UUID, session: SessionDep, user: User) -> Response:
    """The labeller's next pair, with a button per grade and a skip (keys 0-9 and s, with console.js)."""
    ctx, queue = await labeling_service.load(session, user.principal, queue_id)
    queues_url = f"{PREFIX}/projects/{ctx.project.slug}/labeling"
    on_error_back_to(request, queues_url)
    pair = await labeling_service.next_item(session, ctx, queue)
    return _project_page(
        request,
        "label.html",
        user,
        ctx,
        "labeling",
        title=f"Labelling: {queue.name}",
        queue=queue,
        pair=pair,
        is_open=pair.status == LabelingStatus.open,
        grades=_grades(queue.min_grade, queue.max_grade),
        queues_url=queues_url,
    )


@router.post("/labeling-queues/{queue_id}/items/{item_id}/label")
async def label_item(
    request: Request, queue_id: uuid.UUID, item_id: uuid.UUID, session: SessionDep, user: Poster
) -> Response:
    form = await form_of(request)
    ctx, queue = await labeling_service.load(session, user.principal, queue_id)
    here = f"{PREFIX}/labeling-queues/{queue_id}/label"
    on_error_back_to(request, here)
    if form.get("skip"):
        body: dict[str, Any] = {"skip": True, "reason": _optional(form.get("reason"))}
    else:
        body = {"grade": _optional(form.get("grade"))}
    answer = await labeling_service.label(session, ctx, queue, item_id, _parse(LabelCreate, body))
    said = f"Skipped: {answer.skip_reason}." if answer.skip_reason else f"Graded {answer.grade}."
    return redirect(request, here, f"{said} {answer.done:,} of your {answer.assigned:,} pairs answered.")
