from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import AuditLog


async def list_entries(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    before_id: int | None,
    action: str | None,
    entity_type: str | None,
    limit: int,
) -> list[AuditLog]:
    query = select(AuditLog).where(AuditLog.project_id == project_id)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    if action:
        query = query.where(AuditLog.action == action)
    if entity_type:
        query = query.where(AuditLog.entity_type == entity_type)
    query = query.order_by(AuditLog.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())
