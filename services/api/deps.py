"""Typed request dependencies: the lifespan's resources and one unit of work per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from arq.connections import ArqRedis
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.db import unit_of_work


@dataclass(frozen=True)
class ApiResources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis  # arq's client: the job queue, pub/sub and plain Redis commands
    import_limiter: anyio.CapacityLimiter  # dataset imports parsing at once in this process
    event_streams: anyio.CapacityLimiter  # server-sent event streams open at once (each holds Redis)


def get_resources(request: Request) -> ApiResources:
    resources: ApiResources = request.state.resources
    return resources


ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One unit of work per request: commit after the handler returns, roll back if it raised.

    Services only flush; work that must follow the commit (enqueue, publish) is registered with
    ``shared.db.after_commit``."""
    async with unit_of_work(resources.sessionmaker) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a failed commit is an error
# response rather than a success the database never saw.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
