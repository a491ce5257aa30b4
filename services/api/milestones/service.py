from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.milestones import repository
from services.api.milestones.schemas import MilestoneCreate, MilestoneRead, MilestoneUpdate
from services.api.projects import repository as projects_repository
from services.api.projects.permissions import Action
from services.api.schemas import snapshot
from shared.errors import Conflict
from shared.models import Milestone

FIELDS = ("title", "description", "due_date", "status")


async def list_milestones(session: AsyncSession, ctx: ProjectContext) -> list[MilestoneRead]:
    return [
        MilestoneRead.model_validate(m) for m in await projects_repository.milestones(session, ctx.project.id)
    ]


async def create(session: AsyncSession, ctx: ProjectContext, data: MilestoneCreate) -> MilestoneRead:
    ctx.require(Action.manage_milestones)
    if await repository.title_taken(session, ctx.project.id, data.title):
        raise Conflict(f"the project already has a milestone titled {data.title!r}")
    milestone = Milestone(project_id=ctx.project.id, **data.model_dump())
    session.add(milestone)
    await session.flush()
    await session.refresh(milestone)
    await audit_change(
        session, ctx, "milestone.create", "milestone", milestone.id, None, snapshot(milestone, FIELDS)
    )
    return MilestoneRead.model_validate(milestone)


async def load(
    session: AsyncSession, principal: Principal, milestone_id: uuid.UUID
) -> tuple[ProjectContext, Milestone]:
    return await load_entity(session, principal, Milestone, milestone_id, "milestone")


async def update(
    session: AsyncSession, ctx: ProjectContext, milestone: Milestone, data: MilestoneUpdate
) -> MilestoneRead:
    ctx.require(Action.manage_milestones)
    changes = data.model_dump(exclude_unset=True)
    if "title" in changes and await repository.title_taken(
        session, ctx.project.id, changes["title"], milestone.id
    ):
        raise Conflict(f"the project already has a milestone titled {changes['title']!r}")
    before = snapshot(milestone, FIELDS)
    for name, value in changes.items():
        setattr(milestone, name, value.value if name == "status" else value)
    await session.flush()
    await session.refresh(milestone)
    await audit_change(
        session, ctx, "milestone.update", "milestone", milestone.id, before, snapshot(milestone, FIELDS)
    )
    return MilestoneRead.model_validate(milestone)


async def delete(session: AsyncSession, ctx: ProjectContext, milestone: Milestone) -> None:
    """Delete a milestone; its tasks stay, without a milestone."""
    ctx.require(Action.manage_milestones)
    before = snapshot(milestone, FIELDS)
    await session.delete(milestone)
    await session.flush()
    await audit_change(session, ctx, "milestone.delete", "milestone", milestone.id, before, None)
