from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Milestone


async def title_taken(
    session: AsyncSession, project_id: uuid.UUID, title: str, exclude: uuid.UUID | None = None
) -> bool:
    query = select(Milestone.id).where(Milestone.project_id == project_id, Milestone.title == title)
    if exclude is not None:
        query = query.where(Milestone.id != exclude)
    return (await session.execute(query)).first() is not None
