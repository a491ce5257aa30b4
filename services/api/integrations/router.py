from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.integrations import service
from services.api.integrations.schemas import (
    GitConnect,
    GitConnected,
    GitRead,
    JiraConnect,
    JiraConnected,
    JiraEventResult,
    JiraRead,
    PushResult,
    TaskLinks,
)
from services.api.tasks import service as tasks_service

router = APIRouter(tags=["integrations"])


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.put("/projects/{project_id}/integrations/jira", response_model=JiraConnected, responses=ERRORS)
async def connect_jira(
    data: JiraConnect, ctx: ProjectDep, session: SessionDep, resources: ResourcesDep, request: Request
) -> JiraConnected:
    """Connect the project to a Jira project (checked against Jira first): tasks become issues, moves
    transition them, Jira's changes come back through the webhook, and the ML lifecycle's events become
    comments. The API token is stored sealed and never answered; the webhook secret is answered once."""
    return await service.jira_connect(
        session, ctx, data, _base(request), resources.settings.secret_key.get_secret_value()
    )


@router.get("/projects/{project_id}/integrations/jira", response_model=JiraRead, responses=ERRORS)
async def get_jira(ctx: ProjectDep, session: SessionDep, request: Request) -> JiraRead:
    """The connection (never its token or secret), its webhook, its last error and the calls waiting."""
    return await service.jira_get(session, ctx, _base(request))


@router.delete(
    "/projects/{project_id}/integrations/jira", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS
)
async def disconnect_jira(ctx: ProjectDep, session: SessionDep, resources: ResourcesDep) -> Response:
    await service.jira_delete(session, ctx, resources.settings.secret_key.get_secret_value())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/integrations/jira/{connection_id}/webhook", response_model=JiraEventResult, responses=ERRORS)
async def jira_webhook(
    connection_id: uuid.UUID, request: Request, session: SessionDep, resources: ResourcesDep
) -> JiraEventResult:
    """Where Jira sends issue events, signed (X-Hub-Signature: sha256=HMAC of the body under the
    connection's webhook secret); no API key. A bad signature is a 401 and changes nothing."""
    return await service.jira_event(
        session,
        connection_id,
        await request.body(),
        request.headers.get("x-hub-signature"),
        resources.settings.secret_key.get_secret_value(),
    )


@router.put("/projects/{project_id}/integrations/git", response_model=GitConnected, responses=ERRORS)
async def connect_git(
    data: GitConnect, ctx: ProjectDep, session: SessionDep, resources: ResourcesDep, request: Request
) -> GitConnected:
    """Connect the project's Git host: its push webhook (push_url, with the secret answered once) links
    commits that name a task (RF-<n>, or its Jira issue's key) and moves a task a commit closes."""
    return await service.git_connect(
        session, ctx, data, _base(request), resources.settings.secret_key.get_secret_value()
    )


@router.get("/projects/{project_id}/integrations/git", response_model=GitRead, responses=ERRORS)
async def get_git(ctx: ProjectDep, session: SessionDep, request: Request) -> GitRead:
    return await service.git_get(session, ctx, _base(request))


@router.delete(
    "/projects/{project_id}/integrations/git", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS
)
async def disconnect_git(ctx: ProjectDep, session: SessionDep) -> Response:
    await service.git_delete(session, ctx)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/integrations/git/{connection_id}/push", response_model=PushResult, responses=ERRORS)
async def git_push(
    connection_id: uuid.UUID, request: Request, session: SessionDep, resources: ResourcesDep
) -> PushResult:
    """A push webhook from GitHub (X-Hub-Signature-256) or GitLab (X-Gitlab-Token); no API key."""
    return await service.git_push(
        session,
        connection_id,
        request.headers,
        await request.body(),
        resources.settings.secret_key.get_secret_value(),
    )


@router.get("/tasks/{task_id}/links", response_model=TaskLinks, responses=ERRORS)
async def task_links(task_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> TaskLinks:
    """The task's key (RF-<n>), its Jira issue and the commits that named it."""
    _, task = await tasks_service.load(session, principal, task_id)
    return await service.task_links(session, task)
