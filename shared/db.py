"""Async engine and sessionmaker factories. Resources are made in each service's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.config import Settings

log = logging.getLogger("recforge.db")


def create_engine(settings: Settings, *, url: str | None = None, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        url or settings.resolved_database_url(),
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=pool_size or settings.db_pool_size,
        pool_pre_ping=True,
        echo=settings.db_echo,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after the unit of work commits.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Commit when the block succeeds, roll back when it raises.

    After a commit the ``after_commit`` hooks run (one that fails is logged, not raised: the commit
    stands); after a rollback (or a failed commit) the ``on_rollback`` hooks undo side effects outside
    the database, such as files already written."""
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            _run_rollback_hooks(session)
            raise
        try:
            await session.commit()
        except BaseException:
            _run_rollback_hooks(session)
            raise
        session.info.pop("on_rollback", None)
        for hook in session.info.pop("after_commit", []):
            try:
                await hook()
            except Exception:
                # The change is committed: the caller hears of its success. What failed is a notice (a
                # queue entry, a Redis message), and each has a reconciler: the reaper enqueues queued
                # jobs the queue lacks, inference re-reads deployments, heartbeats read cancellations.
                log.warning("an after-commit step failed; it will be reconciled", exc_info=True)


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


AfterCommit = Callable[[], Awaitable[None]]


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the current unit of work has committed (enqueue, publish, ...).

    Nothing that points at a row may leave the process before the row is committed."""
    session.info.setdefault("after_commit", []).append(callback)


def on_rollback(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the current unit of work rolls back instead of committing."""
    session.info.setdefault("on_rollback", []).append(callback)


async def abandon(session: AsyncSession) -> None:
    """Roll the unit of work back by hand (a request that answers an error page instead of raising):
    its after-commit steps are dropped and its rollback hooks run, as when the block raises."""
    await session.rollback()
    _run_rollback_hooks(session)


def _run_rollback_hooks(session: AsyncSession) -> None:
    session.info.pop("after_commit", None)
    for hook in session.info.pop("on_rollback", []):
        hook()
