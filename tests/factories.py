"""Factory functions for test data: real rows through the real models."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ModelVersion, Project, ProjectMember, User


async def create_user(session: AsyncSession, *, name: str = "Ada", email: str | None = None) -> User:
    user = User(name=name, email=email or f"user-{uuid.uuid4().hex[:8]}@example.com")
    session.add(user)
    await session.flush()
    return user


async def create_project(session: AsyncSession, *, owner: User, slug: str | None = None) -> Project:
    project = Project(
        slug=slug or f"p-{uuid.uuid4().hex[:8]}", name="Semantic search for tools", owner_id=owner.id
    )
    session.add(project)
    await session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=owner.id, role="owner"))
    await session.flush()
    return project


async def create_model_version(session: AsyncSession, *, project: Project, version: int = 1) -> ModelVersion:
    model_version = ModelVersion(
        project_id=project.id, version=version, task_type="bi_encoder", base_model="m"
    )
    session.add(model_version)
    await session.flush()
    return model_version
