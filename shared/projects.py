"""How a project is named in URLs and requests: by its id or its slug, and an id always wins.

A reference that reads as a UUID is an id and nothing else, so no project can be reached, or shadowed,
through another project's id; that is also why a slug may never read as a UUID."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Project


def as_id(ref: str) -> uuid.UUID | None:
    """The id a reference names, when it reads as one."""
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


async def project_by_ref(session: AsyncSession, ref: str, *, for_update: bool = False) -> Project | None:
    """The project with that id (when ``ref`` reads as a UUID) or that slug."""
    project_id = as_id(ref)
    condition = Project.id == project_id if project_id is not None else Project.slug == ref.lower()
    query = select(Project).where(condition)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()
