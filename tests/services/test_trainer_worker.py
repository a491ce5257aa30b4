from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.worker import health_app, reap_stale_jobs
from shared.models import TrainingJob
from tests.factories import create_project, create_user


async def test_reaper_fails_only_jobs_whose_heartbeat_stopped(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    stale = TrainingJob(project_id=project.id, job_type="bi_encoder", status="running")
    fresh = TrainingJob(project_id=project.id, job_type="bi_encoder", status="running")
    queued = TrainingJob(project_id=project.id, job_type="bi_encoder", status="queued")
    session.add_all([stale, fresh, queued])
    await session.flush()
    await session.execute(
        text("UPDATE training_jobs SET heartbeat_at = now() - interval '10 minutes' WHERE id = :id"),
        {"id": stale.id},
    )
    await session.execute(
        text("UPDATE training_jobs SET heartbeat_at = now() WHERE id = :id"), {"id": fresh.id}
    )
    await session.commit()

    assert await reap_stale_jobs({"sessionmaker": sessionmaker}) == 1

    session.expire_all()
    rows = {j.id: j for j in (await session.execute(select(TrainingJob))).scalars()}
    assert rows[stale.id].status == "failed"
    assert "no heartbeat" in (rows[stale.id].error or "")
    assert rows[stale.id].finished_at is not None
    assert rows[fresh.id].status == "running"
    assert rows[queued.id].status == "queued"


async def test_worker_health_endpoints(db: Any, engine: Any, settings: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.resolved_redis_url())
    app = health_app({"engine": engine, "redis": redis})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    await redis.aclose()
    assert ready.status_code == 200, ready.text
