from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Deployment, MerchandisingRule, ModelVersion
from shared.models.enums import DeploymentRole, ModelStatus


async def active_deployment(
    session: AsyncSession, project_id: uuid.UUID, role: DeploymentRole
) -> Deployment | None:
    """The role's active deployment, locked for the rest of the transaction."""
    query = (
        select(Deployment)
        .where(Deployment.project_id == project_id, Deployment.role == role.value, Deployment.is_active)
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def set_version_status(
    session: AsyncSession, version_id: uuid.UUID | None, status: ModelStatus
) -> None:
    if version_id is None:
        return
    version = await session.get(ModelVersion, version_id)
    if version is not None:
        version.status = status.value


async def list_deployments(
    session: AsyncSession, project_id: uuid.UUID, *, history: bool
) -> list[Deployment]:
    query = select(Deployment).where(Deployment.project_id == project_id)
    if not history:
        query = query.where(Deployment.is_active)
    query = query.order_by(Deployment.created_at.desc(), Deployment.id)
    return list((await session.execute(query)).scalars())


async def list_rules(session: AsyncSession, project_id: uuid.UUID) -> list[MerchandisingRule]:
    query = (
        select(MerchandisingRule)
        .where(MerchandisingRule.project_id == project_id)
        .order_by(MerchandisingRule.created_at, MerchandisingRule.id)
    )
    return list((await session.execute(query)).scalars())


async def count_rules(session: AsyncSession, project_id: uuid.UUID) -> int:
    query = select(func.count()).where(MerchandisingRule.project_id == project_id)
    return int((await session.execute(query)).scalar_one())
