"""What could lose or miscount shoppers' events: ids never served, products the catalog lacks, the same
event sent twice, storefront clocks hours off, and PostgreSQL going away in the middle of a burst."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.app import create_app
from shared.config import Settings
from shared.models import Event, Impression
from tests.support.faults import TcpProxy
from tests.support.world import World, bearer


async def test_unknown_requests_unknown_products_duplicates_and_skewed_clocks_count_as_they_should(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project_id = uuid.UUID((await world.call("member", "GET", "/api/v1/projects/search-a")).json()["id"])
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker() as session:
        session.add(Impression(project_id=project_id, request_id="served", endpoint="recommend", query="saw",
                               product_ids=["p1", "p2", "p3"], latency_ms=4.0, served_at=now))  # fmt: skip
        await session.commit()
    events = [
        {"event": "click", "product_id": "p2", "request_id": "served", "event_id": "e1",
         "occurred_at": (now + dt.timedelta(hours=5)).isoformat()},  # a storefront clock 5 h fast
        {"event": "click", "product_id": "p2", "request_id": "served", "event_id": "e1"},  # sent again
        {"event": "cart", "product_id": "p3", "request_id": "served", "event_id": "e2",
         "occurred_at": (now - dt.timedelta(hours=7)).isoformat()},  # and one 7 h slow
        {"event": "click", "product_id": "p1", "request_id": "never-served", "event_id": "e3"},
        {"event": "click", "product_id": "not-in-any-catalog", "request_id": "served", "event_id": "e4"},
    ]  # fmt: skip
    sent = await inference_client.post(
        "/events", json={"project": "search-a", "events": events}, headers=bearer(world.keys["service"])
    )
    assert sent.status_code == 202 and sent.json() == {"accepted": 4, "duplicates": 1}, sent.text
    again = await inference_client.post(
        "/events", json={"project": "search-a", "events": events[:1]}, headers=bearer(world.keys["service"])
    )
    assert again.json() == {"accepted": 0, "duplicates": 1}  # a retry of the whole batch stores nothing

    async with sessionmaker() as session:
        stored = (await session.execute(select(Event.event_id, Event.occurred_at))).tuples().all()
    assert sorted(e for e, _ in stored) == ["e1", "e2", "e3", "e4"]  # all kept: they are the truth
    assert dict(stored)["e1"] - now > dt.timedelta(hours=4)  # as the storefront said

    metrics = await world.call(
        "viewer", "GET", "/api/v1/projects/search-a/online-metrics", params={"bucket": "hour", "k": 2}
    )
    [row] = metrics.json()["rows"]
    # the served request: one click on p2 (whatever the clocks said, and sent twice), the click on a
    # product it never showed, and the cart; the request never served counts nowhere
    assert (row["requests"], row["clicks"], row["ctr_at_k"], row["cart_rate"]) == (1, 2, 1.0, 1.0)
    assert row["mrr"] == 0.5 and row["zero_click_rate"] == 0.0


async def test_a_burst_through_a_postgres_outage_is_stored_or_refused_never_lost(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Batches of events go on while the database is cut off: each is stored (202) or refused with 503
    and Retry-After, and the sender, retrying what was refused, finds every event stored exactly once."""
    database = make_url(settings.resolved_database_url())
    batches, size = 60, 10
    async with TcpProxy(database.host or "127.0.0.1", database.port or 5432) as proxy:
        through = database.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        app = create_app(settings.model_copy(update={"database_url": through}))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
                headers = bearer(world.keys["service"])
                pending = list(range(batches))
                refused: list[httpx.Response] = []
                others: list[int] = []
                stored = 0
                rounds = 0
                while pending and rounds < 200:
                    rounds += 1
                    number = pending.pop(0)
                    if number == 20 and rounds == 21:
                        proxy.cut()
                    if rounds == 45:
                        proxy.restore()
                    events = [
                        {"event": "click", "product_id": f"p{i}", "request_id": f"r{number}",
                         "event_id": f"burst-{number}-{i}"}
                        for i in range(size)
                    ]  # fmt: skip
                    answer = await client.post(
                        "/events", json={"project": "search-a", "events": events}, headers=headers
                    )
                    if answer.status_code == 202:
                        stored += answer.json()["accepted"]
                    elif answer.status_code == 503:
                        refused.append(answer)
                        pending.append(number)  # sent again later, as a storefront retries
                        await asyncio.sleep(0.05)
                    else:
                        others.append(answer.status_code)
                assert not pending and not others, (pending, others)
    assert refused and all(r.headers.get("Retry-After") for r in refused)
    async with sessionmaker() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Event).where(Event.event_id.like("burst-%"))
            )
        ).scalar_one()
    assert count == batches * size  # every event, once
    assert stored <= count  # a batch stored as its connection broke was refused, and its retry skipped
    print(f"{len(refused)} batches refused with 503 during the outage, then stored on retry")
