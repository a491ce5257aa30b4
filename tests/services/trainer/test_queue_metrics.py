"""The trainer's queue metrics: what KEDA scales the worker pool on. Ready counts only the jobs a worker
could start now (arq's sorted set also holds deferred jobs and jobs already running); waiting is per
project and device; /metrics answers the metrics token or an admin key only."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from arq import create_pool
from arq.constants import in_progress_key_prefix
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer import queue_metrics
from services.trainer.health import health_app
from shared.config import Settings
from shared.jobs import redis_settings
from shared.models import TrainingJob
from tests.support.world import World


async def test_ready_leaves_out_deferred_and_running_jobs(settings: Settings) -> None:
    redis = await create_pool(redis_settings(settings))
    queue = f"{settings.queue_name}:ready-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    try:
        for i in range(4):
            await redis.enqueue_job("noop", _job_id=f"due-{i}", _queue_name=queue)
        await redis.enqueue_job("noop", _job_id="later", _queue_name=queue, _defer_by=3600)
        await redis.set(in_progress_key_prefix + "due-0", b"1")  # a worker holds it
        assert await redis.zcard(queue) == 5  # what a ZCARD-based scaler would see
        assert await queue_metrics.queue_counts(redis, queue, now + 1000) == (3, 1)
        assert await queue_metrics.queue_counts(redis, f"{queue}:empty") == (0, 0)
    finally:
        await redis.delete(queue, in_progress_key_prefix + "due-0")
        await redis.aclose()


async def test_metrics_endpoint_counts_per_project_and_device_for_the_token_or_an_admin(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], db: Any
) -> None:
    redis = await create_pool(redis_settings(settings))
    project_a = uuid.UUID(world.projects["search-a"]["id"])
    project_b = uuid.UUID(world.projects["search-b"]["id"])
    async with sessionmaker() as session:
        session.add_all(
            [
                TrainingJob(project_id=project_a, job_type="bi_encoder", status="queued", device="cuda"),
                TrainingJob(project_id=project_a, job_type="bi_encoder", status="queued", device="cuda"),
                TrainingJob(project_id=project_a, job_type="bi_encoder", status="queued"),
                TrainingJob(project_id=project_b, job_type="bi_encoder", status="running", device="cpu"),
                TrainingJob(project_id=project_b, job_type="bi_encoder", status="succeeded"),
            ]
        )
        await session.commit()
    await redis.enqueue_job("noop", _job_id="m-1", _queue_name=settings.queue_name)
    app = health_app(
        _engine(sessionmaker), redis, settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://trainer"
        ) as client:
            assert (await client.get("/metrics")).status_code == 401
            user = await client.get("/metrics", headers={"Authorization": f"Bearer {world.keys['owner']}"})
            assert user.status_code == 403 and "metrics token" in user.json()["message"]
            for key in ("scrape-me", world.admin):
                answer = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
                assert answer.status_code == 200, answer.text
            text = answer.text
    finally:
        await redis.delete(settings.queue_name)
        await redis.aclose()
    assert "recforge_trainer_jobs_ready 1.0" in text
    assert "recforge_trainer_jobs_running 1.0" in text
    assert 'recforge_trainer_jobs_waiting{device="cuda",project="search-a"} 2.0' in text
    assert 'recforge_trainer_jobs_waiting{device="auto",project="search-a"} 1.0' in text
    assert 'project="search-b"' not in text  # nothing of it waits


def _engine(sessionmaker: async_sessionmaker[AsyncSession]) -> Any:
    return sessionmaker.kw["bind"]
