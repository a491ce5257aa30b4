from __future__ import annotations

from typing import Any

import httpx

from services.trainer.worker import health_app


async def test_worker_health_endpoints(db: Any, engine: Any, settings: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.resolved_redis_url())
    app = health_app({"engine": engine, "redis": redis})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    await redis.aclose()
    assert ready.status_code == 200, ready.text
