"""Append-only audit records: who changed what, when, with the values before and after.

Every change is recorded in the unit of work that makes it, so the log and the data never disagree."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import ProjectContext
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
