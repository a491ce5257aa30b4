"""The impression log: never waits, drops what it cannot hold (counted), retries then drops what the
database refuses (counted), writes what is buffered at shutdown, and deletes old rows per project."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.impressions import ImpressionLog, Served, delete_expired
from services.inference.metrics import InferenceMetrics
from shared.config import Settings
from shared.db import create_engine, create_sessionmaker
from shared.models import Impression
from shared.redis import create_redis
from tests.support.world import World


def _served(project_id: str, n: int) -> Served:
    return Served(
        project_id=uuid.UUID(project_id),
        request_id=f"r{n}",
        endpoint="recommend",
        model_version_id=None,
        reranker_version_id=None,
        arm="primary",
        query=f"drill {n}",
        user_id=None,
        product_ids=["p1", "p2", "p3"],
        latency_ms=3.25,
    )


def _dropped(metrics: InferenceMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "recforge_inference_impressions_dropped_total", {"reason": reason}
    )
    return value or 0.0


async def _count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Impression))).scalar_one())


async def test_a_full_buffer_drops_and_counts_and_what_it_holds_is_written(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project = world.projects["search-a"]["id"]
    metrics = InferenceMetrics()
    redis = create_redis(settings)
    log = ImpressionLog(settings.model_copy(update={"impression_buffer": 3}), sessionmaker, redis, metrics)
    try:
        for n in range(5):
            log.record(_served(project, n))  # returns at once, whatever the buffer holds
        assert _dropped(metrics, "buffer_full") == 2
        await log.flush()
    finally:
        await redis.aclose()
    async with sessionmaker() as session:
        rows = (await session.execute(select(Impression).order_by(Impression.id))).scalars().all()
    assert [(r.request_id, r.product_ids, r.latency_ms) for r in rows] == [
        (f"r{n}", ["p1", "p2", "p3"], 3.25) for n in range(3)
    ]
    assert metrics.registry.get_sample_value("recforge_inference_impressions_written_total") == 3


async def test_a_batch_the_database_refuses_is_retried_then_dropped_and_counted(
    world: World, settings: Settings
) -> None:
    project = world.projects["search-a"]["id"]
    metrics = InferenceMetrics()
    nowhere = create_engine(
        settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"})
    )
    redis = create_redis(settings)
    log = ImpressionLog(settings, create_sessionmaker(nowhere), redis, metrics)
    try:
        for n in range(4):
            log.record(_served(project, n))
        await log.flush()  # no exception reaches the service: the loss is counted and logged
    finally:
        await redis.aclose()
        await nowhere.dispose()
    assert _dropped(metrics, "database") == 4


async def test_the_writer_writes_in_the_background_and_at_shutdown(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project = world.projects["search-a"]["id"]
    redis = create_redis(settings)
    log = ImpressionLog(
        settings.model_copy(update={"impression_flush_s": 0.05}), sessionmaker, redis, InferenceMetrics()
    )
    try:
        await log.start()
        log.record(_served(project, 1))
        for _ in range(100):
            if await _count(sessionmaker) == 1:
                break
            await asyncio.sleep(0.05)
        assert await _count(sessionmaker) == 1
        for n in range(2, 700):  # more than a batch, then stop at once: all of it is written first
            log.record(_served(project, n))
        await log.close()
    finally:
        await redis.aclose()
    assert await _count(sessionmaker) == 699


async def test_old_impressions_go_by_each_projects_retention_in_bounded_batches(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    a, b = world.projects["search-a"]["id"], world.projects["search-b"]["id"]
    changed = await world.call(
        "owner", "PATCH", f"/api/v1/projects/{a}", json={"impression_retention_days": 1}
    )
    assert changed.status_code == 200 and changed.json()["impression_retention_days"] == 1
    assert world.projects["search-b"]["impression_retention_days"] == 90
    refused = await world.call(
        "owner", "PATCH", f"/api/v1/projects/{a}", json={"impression_retention_days": 0}
    )
    assert refused.status_code == 422
    async with sessionmaker() as session:
        for project, age, count in (
            (a, dt.timedelta(days=2), 5),
            (a, dt.timedelta(hours=1), 2),
            (b, dt.timedelta(days=2), 3),
        ):
            await session.execute(
                text(
                    "INSERT INTO impressions (project_id, request_id, endpoint, product_ids, latency_ms, served_at) "
                    "SELECT :project, 'r' || n, 'recommend', ARRAY['p1'], 1.0, now() - CAST(:age AS interval) "
                    "FROM generate_series(1, :count) AS n"
                ),
                {"project": project, "age": age, "count": count},
            )
        await session.commit()
    assert await delete_expired(sessionmaker, batch=2, pause_s=0) == 5
    async with sessionmaker() as session:
        left = (
            await session.execute(select(Impression.project_id, func.count()).group_by(Impression.project_id))
        ).all()
    assert {str(p): n for p, n in left} == {a: 2, b: 3}
