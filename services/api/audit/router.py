from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.api.audit import repository
from services.api.audit.schemas import AuditEntry
from services.api.context import ProjectDep
from services.api.deps import SessionDep
from services.api.errors import ERRORS
from services.api.pagination import CursorQuery, LimitQuery, Page, decode_int_cursor, encode_cursor
from services.api.projects.permissions import Action

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
    ctx.require(Action.read_audit)
    rows = await repository.list_entries(
        session,
        ctx.project.id,
        before_id=decode_int_cursor(cursor),
        action=action,
        entity_type=entity_type,
        limit=limit + 1,
    )
    items = [AuditEntry.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor([rows[limit - 1].id]) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
