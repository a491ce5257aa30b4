"""Redis going away after a change commits: the change answers success, and the notice it owed is made
up for later (the reaper enqueues the job; inference re-reads deployments on its own)."""

from __future__ import annotations

import io
from typing import Any

import httpx
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.app import create_app
from services.trainer.reaper import reap_stale_jobs
from services.trainer.store import JobStore
from shared.config import Settings
from shared.models import TrainingJob
from tests.factories import add_version
from tests.support.data import CATALOG_CSV, relevance_csv
from tests.support.faults import TcpProxy
from tests.support.world import World

P = "/api/v1/projects/search-a"


async def test_committed_changes_answer_success_while_redis_is_down(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    for name, body, kind in (
        ("catalog.csv", CATALOG_CSV, "catalog"),
        ("judgments.csv", relevance_csv(), "relevance"),
    ):
        imported = await world.call(
            "member",
            "POST",
            f"{P}/datasets",
            files=[("file", (name, io.BytesIO(body.encode())))],
            data={"kind": kind},
        )
        assert imported.status_code == 201, imported.text
    dataset_version = imported.json()["version_id"]
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    version = await add_version(sessionmaker, world.projects["search-a"]["id"])

    redis = make_url(settings.resolved_redis_url())
    async with TcpProxy(redis.host or "127.0.0.1", redis.port or 6379) as proxy:
        through = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}/{redis.database or 0}"}
        )
        app = create_app(through)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                proxy.cut()
                member: dict[str, Any] = world.as_("member")
                submitted = await client.post(
                    f"{P}/training-jobs",
                    json={"job_type": "bi_encoder", "dataset_version_id": dataset_version},
                    headers={**member, "Idempotency-Key": "during-the-outage"},
                )
                assert submitted.status_code == 202, submitted.text
                promoted = await client.post(
                    f"/api/v1/model-versions/{version}/promote", headers=world.as_("owner")
                )
                assert promoted.status_code == 200, promoted.text
    async with sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(TrainingJob))).scalar_one() == 1

    # the job the queue never heard of is enqueued by the reaper once it is a minute old
    async with sessionmaker() as session:
        await session.execute(update(TrainingJob).values(queued_at=text("now() - interval '5 minutes'")))
        await session.commit()
    arq = ArqRedis.from_url(settings.resolved_redis_url())
    try:
        assert (await reap_stale_jobs(settings, JobStore(sessionmaker), arq))["re_enqueued"] == 1
    finally:
        await arq.aclose()
