from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deployments import service
from services.api.deployments.schemas import DeploymentRead, PromoteRequest, RuleCreate, RuleRead
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS

router = APIRouter(tags=["deployments"])


@router.post(
    "/model-versions/{version_id}/promote",
    response_model=DeploymentRead,
    responses={**ERRORS, 409: {"description": "Nothing to serve, or no current version for a canary"}},
)
async def promote(
    version_id: uuid.UUID,
    session: SessionDep,
    resources: ResourcesDep,
    principal: CurrentPerson,
    data: PromoteRequest | None = None,
) -> DeploymentRead:
    """Deploy a model version in the role its task implies (bi-encoder: retriever, cross-encoder:
    reranker, classifier: classifier), with all traffic or as a canary beside the current version.
    The version becomes `production` (or `staging` as a canary); the one it replaces is `retired`.
    Inference services load it in the background and swap atomically."""
    return await service.promote(session, resources, principal, version_id, data or PromoteRequest())


@router.get("/projects/{project_id}/deployments", response_model=list[DeploymentRead], responses=ERRORS)
async def list_deployments(
    ctx: ProjectDep, session: SessionDep, history: bool = False
) -> list[DeploymentRead]:
    """The active deployment of each role; with `history=true`, every past one too, newest first."""
    return await service.list_deployments(session, ctx, history=history)


@router.get(
    "/projects/{project_id}/merchandising-rules",
    response_model=list[RuleRead],
    responses=ERRORS,
    tags=["merchandising"],
)
async def list_rules(ctx: ProjectDep, session: SessionDep) -> list[RuleRead]:
    """The rules /recommend applies after ranking, oldest first."""
    return await service.list_rules(session, ctx)


@router.post(
    "/projects/{project_id}/merchandising-rules",
    status_code=status.HTTP_201_CREATED,
    response_model=RuleRead,
    responses=ERRORS,
    tags=["merchandising"],
)
async def add_rule(
    data: RuleCreate, ctx: ProjectDep, session: SessionDep, resources: ResourcesDep
) -> RuleRead:
    """Pin a product to a slot for a query, boost or bury products or categories, hide them, or hide
    everything out of stock. Inference services apply a new rule within moments (a Redis notice)."""
    return await service.add_rule(session, resources, ctx, data)


@router.delete(
    "/merchandising-rules/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=ERRORS,
    tags=["merchandising"],
)
async def delete_rule(
    rule_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, principal: CurrentPerson
) -> Response:
    await service.delete_rule(session, resources, principal, rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
