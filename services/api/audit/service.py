"""Append-only audit records: who changed what, when, with the values before and after.

Every change is recorded in the unit of work that makes it, so the log and the data never disagree."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit import repository
from services.api.audit.schemas import AuditEntry
from services.api.context import ProjectContext
from services.api.pagination import Page, decode_int_cursor, encode_cursor
from services.api.projects.permissions import Action
from shared.models import AuditLog


async def record(
    session: AsyncSession,
    *,
    action: str,
    entity_type: str,
    entity_id: uuid.UUID | str | None,
    actor_user_id: uuid.UUID | None,
    actor_key_id: uuid.UUID | None,
    project_id: uuid.UUID | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    session.add(
        AuditLog(
            project_id=project_id,
            actor_user_id=actor_user_id,
            actor_key_id=actor_key_id,
            action=action,
            entity_type=entity_type,
            entity_id=str(entity_id) if entity_id is not None else None,
            before=before,
            after=after,
            request_id=request_id,
        )
    )


async def audit_change(
    session: AsyncSession,
    ctx: ProjectContext,
    action: str,
    entity_type: str,
    entity_id: uuid.UUID | str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Record a change inside a project, by the caller of the request."""
    await record(
        session,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        project_id=ctx.project.id,
        before=before,
        after=after,
        request_id=ctx.principal.request_id,
        **ctx.actor,
    )


async def list_entries(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    cursor: str | None,
    limit: int,
    action: str | None = None,
    entity_type: str | None = None,
) -> Page[AuditEntry]:
    """The project's audit log, newest first, a page of it (roles that may read it)."""
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
