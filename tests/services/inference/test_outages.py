"""Events arrive while Redis is away: they are stored all the same (without the version that served
their request, which only Redis remembers)."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.app import create_app
from shared.config import Settings
from shared.models import Event
from tests.support.faults import TcpProxy
from tests.support.world import World, bearer


async def test_events_are_stored_while_redis_is_down(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    redis = make_url(settings.resolved_redis_url())
    async with TcpProxy(redis.host or "127.0.0.1", redis.port or 6379) as proxy:
        through = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}/{redis.database or 0}"}
        )
        app = create_app(through)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
                proxy.cut()
                events = [
                    {"type": "click", "product_id": "p1", "user_id": "u1", "request_id": "r-1"},
                    {
                        "type": "purchase",
                        "product_id": "p1",
                        "user_id": "u1",
                        "request_id": "r-1",
                        "value": 9.5,
                    },
                ]
                sent = await client.post(
                    "/events",
                    json={"project": "search-a", "events": events},
                    headers=bearer(world.keys["service"]),
                )
                assert sent.status_code == 202, sent.text
                assert sent.json() == {"accepted": 2, "duplicates": 0}
    async with sessionmaker() as session:
        stored = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
    assert [(e.event_type, e.request_id, e.model_version_id) for e in stored] == [
        ("click", "r-1", None),
        ("purchase", "r-1", None),
    ]
