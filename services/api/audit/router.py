from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.api.audit import service
from services.api.audit.schemas import AuditEntry
from services.api.context import ProjectDep
from services.api.deps import SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page

router = APIRouter(tags=["audit"])


@router.get(
    "/projects/{project_id}/audit",
    response_model=Page[AuditEntry],
    responses=ERRORS,
    summary="The project's audit log, newest first",
)
async def list_audit(
    ctx: ProjectDep,
    session: SessionDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    action: Annotated[str | None, Query(max_length=100, examples=["task.update"])] = None,
    entity_type: Annotated[str | None, Query(max_length=50, examples=["task"])] = None,
) -> Page[AuditEntry]:
    return await service.list_entries(
        session, ctx, cursor=cursor, limit=limit, action=action, entity_type=entity_type
    )
