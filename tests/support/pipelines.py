"""What the loop's tests share: the api's resources outside a request, and a sample shop's data."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from arq import create_pool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.deps import ApiResources
from services.cli.sample_shop import Shop, generate
from shared.config import Settings
from shared.db import create_engine, create_sessionmaker
from shared.jobs import redis_settings
from shared.models import PipelineRun
from shared.models.enums import RunStatus, TriggerKind
from tests.support.world import World

PROJECT = "/api/v1/projects/search-a"


@asynccontextmanager
async def api_resources(settings: Settings) -> AsyncIterator[ApiResources]:
    """The resources an api process makes in its lifespan: one of these is one controller."""
    engine = create_engine(settings, pool_size=3)
    redis = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
    try:
        yield ApiResources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
            import_limiter=anyio.CapacityLimiter(1),
            event_streams=anyio.CapacityLimiter(4),
        )
    finally:
        await redis.aclose()
        await engine.dispose()


def small_shop() -> tuple[Shop, str, str]:
    """A small sample shop, and its judgments split by query into training data and a golden set."""
    shop = generate(products=200, queries=80, seed=3)
    queries = sorted({query for query, _, _ in shop.judgments})
    golden = set(queries[::4])
    header = "query,product_id,grade\n"
    train = header + "".join(f'"{q}",{p},{g}\n' for q, p, g in shop.judgments if q not in golden)
    gold = header + "".join(f'"{q}",{p},{g}\n' for q, p, g in shop.judgments if q in golden)
    return shop, train, gold


async def import_named(world: World, name: str, body: str, kind: str, who: str = "owner") -> dict[str, Any]:
    response = await world.call(
        who,
        "POST",
        f"{PROJECT}/datasets",
        files=[("file", (f"{name}.csv", io.BytesIO(body.encode())))],
        data={"kind": kind, "name": name},
    )
    assert response.status_code == 201, response.text
    found: dict[str, Any] = response.json()
    return found


async def add_run(
    sessionmaker: async_sessionmaker[AsyncSession],
    pipeline: dict[str, Any],
    *,
    step: str,
    links: dict[str, Any],
    status: RunStatus = RunStatus.running,
    number: int = 1,
    **columns: Any,
) -> str:
    """A run already at ``step``, as the controller would have left it (its spec the pipeline's)."""
    run_id = uuid.uuid4()
    spec = {name: pipeline[name] for name in ("training", "gate", "rollout", "require_approval")}
    async with sessionmaker() as session:
        session.add(
            PipelineRun(
                id=run_id,
                pipeline_id=uuid.UUID(pipeline["id"]),
                project_id=uuid.UUID(pipeline["project_id"]),
                number=number,
                trigger=TriggerKind.manual.value,
                trigger_key=f"manual:{run_id}",
                status=status.value,
                step=step,
                steps=[{"name": step, "status": "running", "started_at": None, "detail": None}],
                links=links,
                spec=spec,
                **columns,
            )
        )
        await session.commit()
    return str(run_id)
