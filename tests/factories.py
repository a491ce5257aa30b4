"""Factory functions for test data: real rows through the real models."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


async def add_version(
    sessionmaker: async_sessionmaker[AsyncSession],
    project_id: str,
    task_type: str = "bi_encoder",
    *,
    number: int = 1,
    artifacts: dict[str, Any] | None = None,
) -> str:
    """A registered model version row (the trainer writes these; its files are not needed here)."""
    version_id = uuid.uuid4()
    async with sessionmaker() as session:
        session.add(
            ModelVersion(
                id=version_id,
                project_id=uuid.UUID(project_id),
                version=number,
                task_type=task_type,
                base_model="sentence-transformers/all-MiniLM-L6-v2",
                artifacts={"model": {"path": "model.onnx"}} if artifacts is None else artifacts,
            )
        )
        await session.commit()
    return str(version_id)
