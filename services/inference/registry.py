"""Which model versions this process holds, per project and role."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Deployment


class ModelRegistry:
    """Holds the loaded versions; readiness compares them with the active deployments."""

    def __init__(self) -> None:
        self._loaded: set[uuid.UUID] = set()

    @property
    def loaded_versions(self) -> frozenset[uuid.UUID]:
        return frozenset(self._loaded)

    async def missing_versions(self, session: AsyncSession) -> set[uuid.UUID]:
        """Deployed versions (primary and canary) that this process has not loaded yet."""
        rows = await session.execute(
            select(Deployment.model_version_id, Deployment.canary_model_version_id).where(
                Deployment.is_active
            )
        )
        wanted: set[uuid.UUID] = set()
        for primary, canary in rows:
            wanted.add(primary)
            if canary is not None:
                wanted.add(canary)
        return wanted - self._loaded
