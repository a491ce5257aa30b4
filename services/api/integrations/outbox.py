"""What RecForge owes Jira, written in the unit of work of the change it reports: the sync loop
(services.api.integrations.sync) makes the calls once the change is committed, in order per task.

Domains call these: tasks (created, changed), the pipelines' controller (the tasks it makes) and
webhooks.emit (the ML lifecycle's events, as comments)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.integrations import LIFECYCLE, lifecycle_comment
from shared.models import JiraConnection, JiraOutbox, Pipeline, PipelineRun, Task
from shared.models.enums import JiraAction, WebhookEvent


async def connection(session: AsyncSession, project_id: uuid.UUID) -> JiraConnection | None:
    found = await session.execute(
        select(JiraConnection).where(JiraConnection.project_id == project_id, JiraConnection.enabled)
    )
    return found.scalar_one_or_none()


def _add(
    session: AsyncSession,
    link: JiraConnection,
    task_id: uuid.UUID | None,
    action: JiraAction,
    payload: dict[str, Any],
) -> None:
    session.add(
        JiraOutbox(
            connection_id=link.id,
            project_id=link.project_id,
            task_id=task_id,
            action=action.value,
            payload=payload,
        )
    )


async def task_created(session: AsyncSession, task: Task) -> None:
    """A new task becomes a new issue of the project's Jira project (then moved to its mapped status)."""
    link = await connection(session, task.project_id)
    if link is None:
        return
    _add(session, link, task.id, JiraAction.create_issue, {})
    await session.flush()


async def task_changed(
    session: AsyncSession, task: Task, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """A task's title, assignee or status changed in RecForge: its issue follows."""
    link = await connection(session, task.project_id)
    if link is None:
        return
    if before.get("status") != after.get("status") and "status" in after:
        _add(session, link, task.id, JiraAction.transition, {"status": after["status"]})
    fields = {
        name: after[name]
        for name in ("title", "assignee_id")
        if name in after and before.get(name) != after[name]
    }
    if fields:
        _add(
            session,
            link,
            task.id,
            JiraAction.update,
            {k: str(v) if v is not None else None for k, v in fields.items()},
        )
    await session.flush()


async def comment(session: AsyncSession, task: Task, text: str) -> None:
    link = await connection(session, task.project_id)
    if link is None:
        return
    _add(session, link, task.id, JiraAction.comment, {"text": text})
    await session.flush()


async def lifecycle(
    session: AsyncSession, project_id: uuid.UUID, event: WebhookEvent, data: dict[str, Any]
) -> int:
    """An ML lifecycle event as a comment on the issue of every task it concerns: the task it names, the
    tasks of its pipeline run, the tasks linked to its model version or job, and tasks labelled
    ``pipeline:<name>`` for its pipeline. How many comments were queued."""
    if event not in LIFECYCLE:
        return 0
    link = await connection(session, project_id)
    if link is None:
        return 0
    tasks: set[uuid.UUID] = set()
    if data.get("task_id"):
        tasks.add(uuid.UUID(str(data["task_id"])))
    conditions = []
    for field in ("model_version_id", "candidate_version_id"):
        if data.get(field):
            conditions.append(Task.model_version_id == uuid.UUID(str(data[field])))
    if data.get("job_id"):
        conditions.append(Task.training_job_id == uuid.UUID(str(data["job_id"])))
    if data.get("run_id"):
        run = await session.get(PipelineRun, uuid.UUID(str(data["run_id"])))
        if run is not None:
            tasks.update(uuid.UUID(str(t)) for t in (run.links or {}).get("task_ids", []))
            pipeline = await session.get(Pipeline, run.pipeline_id)
            if pipeline is not None:
                conditions.append(Task.labels.any(f"pipeline:{pipeline.name}"))  # type: ignore[arg-type]
    if conditions:
        found = await session.execute(select(Task.id).where(Task.project_id == project_id, or_(*conditions)))
        tasks.update(found.scalars())
    text = lifecycle_comment(event, data)
    for task_id in sorted(tasks, key=str):
        _add(session, link, task_id, JiraAction.comment, {"text": text, "event": event.value})
    await session.flush()
    return len(tasks)
