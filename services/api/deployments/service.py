"""Promotion: which model version serves each of a project's roles.

A deployment row is never rewritten: a promotion deactivates the role's active row and inserts a new
one, so the table is the history. Inference services hear of a promotion on Redis once it commits
(and also re-read the active rows periodically, so a lost message only delays the swap)."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.deployments import repository
from services.api.deployments.schemas import DeploymentRead, PromoteRequest, RuleCreate, RuleRead
from services.api.deps import ApiResources
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.schemas import snapshot
from shared.db import after_commit
from shared.errors import Conflict
from shared.jobs import DEPLOYMENTS_CHANNEL
from shared.models import Deployment, MerchandisingRule, ModelVersion
from shared.models.enums import DeploymentRole, ModelStatus, ModelTaskType

ROLE_OF = {
    ModelTaskType.bi_encoder: DeploymentRole.retriever,
    ModelTaskType.cross_encoder: DeploymentRole.reranker,
    ModelTaskType.classifier: DeploymentRole.classifier,
}
MAX_RULES = 1000
FIELDS = ("role", "model_version_id", "canary_model_version_id", "canary_percent", "is_active")


async def promote(
    session: AsyncSession,
    resources: ApiResources,
    principal: Principal,
    version_id: uuid.UUID,
    data: PromoteRequest,
) -> DeploymentRead:
    ctx, version = await load_entity(session, principal, ModelVersion, version_id, "model version")
    ctx.require(Action.deploy)
    if "model" not in (version.artifacts or {}):
        raise Conflict("the model version has no ONNX graph to serve")
    if version.status == ModelStatus.retired.value and data.canary_percent is not None:
        raise Conflict("a retired version is promoted with all traffic, not as a canary")
    role = ROLE_OF[ModelTaskType(version.task_type)]
    await projects_repository.lock_project(session, ctx.project.id)  # one promotion per project at a time
    current = await repository.active_deployment(session, ctx.project.id, role)
    before = snapshot(current, FIELDS) if current else None
    if data.canary_percent is not None:
        if current is None:
            raise Conflict(
                f"the project has no {role.value} deployed yet: promote a version with all traffic first"
            )
        if current.model_version_id == version.id:
            raise Conflict("this version already serves all of the role's traffic")
        primary, canary, percent = current.model_version_id, version.id, data.canary_percent
    else:
        if (
            current is not None
            and current.model_version_id == version.id
            and current.canary_model_version_id is None
        ):
            return DeploymentRead.model_validate(current)  # already so: nothing changes
        primary, canary, percent = version.id, None, 0
    if current is not None:
        current.is_active = False
        current.deactivated_at = func.now()
        await session.flush()  # the partial unique index allows one active row per role
    deployment = Deployment(
        project_id=ctx.project.id,
        role=role.value,
        model_version_id=primary,
        canary_model_version_id=canary,
        canary_percent=percent,
        created_by=principal.user_id,
    )
    session.add(deployment)
    if canary is None:
        version.status = ModelStatus.production.value
        version.promoted_at = func.now()
        if current is not None:
            if current.model_version_id != version.id:
                await repository.set_version_status(session, current.model_version_id, ModelStatus.retired)
            if current.canary_model_version_id not in (None, version.id):
                await repository.set_version_status(
                    session, current.canary_model_version_id, ModelStatus.candidate
                )
    else:
        version.status = ModelStatus.staging.value
        if current is not None and current.canary_model_version_id not in (None, version.id):
            await repository.set_version_status(
                session, current.canary_model_version_id, ModelStatus.candidate
            )
    await session.flush()
    await session.refresh(deployment)
    await audit_change(
        session,
        ctx,
        "model_version.promote",
        "deployment",
        deployment.id,
        before,
        snapshot(deployment, FIELDS),
    )
    message = json.dumps(
        {"project_id": str(ctx.project.id), "role": role.value, "deployment_id": str(deployment.id)}
    )
    redis = resources.redis

    async def notify() -> None:
        await redis.publish(DEPLOYMENTS_CHANNEL, message)

    after_commit(session, notify)
    return DeploymentRead.model_validate(deployment)


async def list_deployments(
    session: AsyncSession, ctx: ProjectContext, *, history: bool
) -> list[DeploymentRead]:
    rows = await repository.list_deployments(session, ctx.project.id, history=history)
    return [DeploymentRead.model_validate(row) for row in rows]


# -- merchandising rules ----------------------------------------------------------------------

RULE_FIELDS = ("action", "query", "product_id", "category", "position", "weight", "note")


def _notify_rules(session: AsyncSession, resources: ApiResources, project_id: uuid.UUID) -> None:
    message = json.dumps({"project_id": str(project_id), "rules": True})
    redis = resources.redis

    async def notify() -> None:
        await redis.publish(DEPLOYMENTS_CHANNEL, message)

    after_commit(session, notify)


async def list_rules(session: AsyncSession, ctx: ProjectContext) -> list[RuleRead]:
    return [RuleRead.model_validate(rule) for rule in await repository.list_rules(session, ctx.project.id)]


async def add_rule(
    session: AsyncSession, resources: ApiResources, ctx: ProjectContext, data: RuleCreate
) -> RuleRead:
    ctx.require(Action.deploy)
    if await repository.count_rules(session, ctx.project.id) >= MAX_RULES:
        raise Conflict(f"a project has at most {MAX_RULES} merchandising rules; delete some first")
    rule = MerchandisingRule(
        project_id=ctx.project.id,
        action=data.action.value,
        query=data.query.strip().lower() if data.query else None,
        product_id=data.product_id,
        category=data.category,
        position=data.position,
        weight=data.weight,
        note=data.note,
        created_by=ctx.principal.user_id,
    )
    session.add(rule)
    await session.flush()
    await session.refresh(rule)
    await audit_change(
        session,
        ctx,
        "merchandising_rule.create",
        "merchandising_rule",
        rule.id,
        None,
        snapshot(rule, RULE_FIELDS),
    )
    _notify_rules(session, resources, ctx.project.id)
    return RuleRead.model_validate(rule)


async def delete_rule(
    session: AsyncSession, resources: ApiResources, principal: Principal, rule_id: uuid.UUID
) -> None:
    ctx, rule = await load_entity(session, principal, MerchandisingRule, rule_id, "merchandising rule")
    ctx.require(Action.deploy)
    before = snapshot(rule, RULE_FIELDS)
    await session.delete(rule)
    await audit_change(session, ctx, "merchandising_rule.delete", "merchandising_rule", rule_id, before, None)
    _notify_rules(session, resources, ctx.project.id)
