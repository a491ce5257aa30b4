"""The database itself refuses bad data: the constraints are real."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, Deployment, Project, Task
from tests.factories import create_model_version, create_project, create_user


async def _expect_integrity_error(session: AsyncSession, row: object, constraint: str) -> None:
    session.add(row)
    with pytest.raises(IntegrityError, match=constraint):
        await session.flush()
    await session.rollback()


async def test_project_slug_format_and_uniqueness(session: AsyncSession) -> None:
    owner = await create_user(session)
    await _expect_integrity_error(
        session, Project(slug="Not A Slug", name="x", owner_id=owner.id), "ck_projects_slug_format"
    )
    owner = await create_user(session)
    await create_project(session, owner=owner, slug="tools-search")
    await _expect_integrity_error(
        session, Project(slug="tools-search", name="y", owner_id=owner.id), "uq_projects_slug"
    )


async def test_task_status_and_estimate_are_checked(session: AsyncSession) -> None:
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    await _expect_integrity_error(
        session, Task(project_id=project.id, title="t", status="finished"), "ck_tasks_status_valid"
    )
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    await _expect_integrity_error(
        session, Task(project_id=project.id, title="t", estimate_hours=-1), "ck_tasks_estimate_non_negative"
    )


async def test_service_key_needs_a_project(session: AsyncSession) -> None:
    user = await create_user(session)
    key = ApiKey(user_id=user.id, name="svc", role="service", key_prefix="rf_x", key_hash=uuid.uuid4().hex)
    await _expect_integrity_error(session, key, "ck_api_keys_service_key_has_project")


async def test_one_active_deployment_per_project_role(session: AsyncSession) -> None:
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    version = await create_model_version(session, project=project)
    session.add(Deployment(project_id=project.id, role="retriever", model_version_id=version.id))
    await session.flush()
    # History rows (inactive) may repeat the role; a second active one may not.
    session.add(
        Deployment(project_id=project.id, role="retriever", model_version_id=version.id, is_active=False)
    )
    await session.flush()
    await _expect_integrity_error(
        session,
        Deployment(project_id=project.id, role="retriever", model_version_id=version.id),
        "uq_deployments_active_project_role",
    )
