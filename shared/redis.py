from __future__ import annotations

from redis.asyncio import Redis

from shared.config import Settings


def create_redis(settings: Settings, *, url: str | None = None) -> Redis:
    client: Redis = Redis.from_url(url or settings.resolved_redis_url(), decode_responses=False)
    return client
