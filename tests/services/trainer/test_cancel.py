"""The worker's cancel listener on the real Redis: it stops only a job whose cancellation is committed,
ignores what it cannot read, and keeps listening after its connection is cut."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.trainer.cancel import start_listening
from services.trainer.context import WorkerContext
from services.trainer.control import JobControl
from services.trainer.store import JobStore
from shared.config import Settings
from shared.jobs import CANCEL_CHANNEL
from shared.models import TrainingJob
from tests.factories import create_project, create_user


async def _running_job(session: AsyncSession, project_id: object, *, cancelled: bool) -> TrainingJob:
    job = TrainingJob(
        project_id=project_id,
        job_type="bi_encoder",
        status="running",
        worker_id="test:1",
        cancel_requested_at=datetime.now(UTC) if cancelled else None,
    )
    session.add(job)
    await session.flush()
    return job


async def _until(condition: object, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_listener_stops_a_cancelled_job_and_survives_a_cut_connection(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
) -> None:
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    cancelled = await _running_job(session, project.id, cancelled=True)
    running = await _running_job(session, project.id, cancelled=False)
    await session.commit()

    redis = ArqRedis.from_url(settings.resolved_redis_url())
    wc = WorkerContext(
        settings=settings, engine=engine, redis=redis, store=JobStore(sessionmaker), worker_id="test:1"
    )
    stop_me, keep_me = JobControl(), JobControl()
    wc.running.update({cancelled.id: stop_me, running.id: keep_me})
    listener = await start_listening(wc)
    try:
        # not committed as cancelled, or not a job id: nothing stops
        assert await redis.publish(CANCEL_CHANNEL, str(running.id)) == 1
        assert await redis.publish(CANCEL_CHANNEL, b"not a job id") == 1
        await asyncio.sleep(0.5)
        assert not keep_me.stop.is_set() and not listener.done()

        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        async def subscribed_again() -> bool:
            return bool((await redis.pubsub_numsub(CANCEL_CHANNEL))[0][1])

        assert await _until(subscribed_again, 10), "the listener did not subscribe again"
        await redis.publish(CANCEL_CHANNEL, str(cancelled.id))

        async def stopped() -> bool:
            return stop_me.stop.is_set()

        assert await _until(stopped, 5), "the cancelled job was not stopped"
        assert not keep_me.stop.is_set()
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await redis.aclose()
