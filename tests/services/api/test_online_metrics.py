"""GET /projects/{project}/online-metrics on impressions and events with known answers: every figure is
checked against a count made by hand."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.feedback.rollups import roll_up_recent
from shared.config import Settings
from shared.models import Event, Impression, OnlineRollupHour
from tests.factories import add_version
from tests.support.world import World

DAY = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def _impression(project: str, request_id: str, version: str, products: list[str], latency: float,
                at: dt.datetime, **extra: object) -> dict[str, object]:  # fmt: skip
    return {
        "project_id": uuid.UUID(project), "request_id": request_id, "endpoint": "recommend",
        "model_version_id": uuid.UUID(version), "product_ids": products, "latency_ms": latency,
        "served_at": at, **extra,
    }  # fmt: skip


def _event(project: str, request_id: str, kind: str, product: str) -> dict[str, object]:
    return {
        "project_id": uuid.UUID(project),
        "request_id": request_id,
        "event_type": kind,
        "product_id": product,
    }


async def test_online_metrics_per_version_and_day_match_a_count_by_hand(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    a, b = world.projects["search-a"]["id"], world.projects["search-b"]["id"]
    v1 = await add_version(sessionmaker, a, number=1)
    v2 = await add_version(sessionmaker, a, number=2)
    cross = await add_version(sessionmaker, a, "cross_encoder", number=3)
    other = await add_version(sessionmaker, b, number=1)
    shown = ["p1", "p2", "p3", "p4"]
    noon, evening = DAY + dt.timedelta(hours=12), DAY + dt.timedelta(hours=20)
    async with sessionmaker() as session:
        await session.execute(
            insert(Impression),
            [
                # v1, Nov 2: r1 clicked at ranks 2 and 4, carted once; r2 nothing; r3 clicked at 1, bought
                _impression(a, "r1", v1, shown, 10.0, noon),
                _impression(a, "r2", v1, shown, 20.0, noon),
                _impression(a, "r3", v1, shown, 30.0, evening, reranker_version_id=uuid.UUID(cross)),
                # v2, Nov 2: r4 clicked at rank 3
                _impression(a, "r4", v2, shown, 5.0, noon),
                # v1, Nov 3: r5 nothing
                _impression(a, "r5", v1, shown[:2], 40.0, DAY + dt.timedelta(days=1, hours=1)),
                # another project's request with the same id sees none of search-a's events
                _impression(b, "r1", other, shown, 1.0, noon),
            ],
        )
        await session.execute(
            insert(Event),
            [
                _event(a, "r1", "click", "p2"),
                _event(a, "r1", "click", "p2"),  # sent twice: counts once
                _event(a, "r1", "click", "p4"),
                _event(a, "r1", "cart", "p4"),
                _event(a, "r3", "click", "p1"),
                _event(a, "r3", "purchase", "p1"),
                _event(a, "r4", "click", "p3"),
                _event(a, "r9", "click", "p1"),  # no impression of that request: not counted
            ],
        )
        await session.commit()

    url = "/api/v1/projects/search-a/online-metrics?from=2026-11-01T00:00:00Z&to=2026-11-05T00:00:00Z&k=3"
    answer = await world.call("viewer", "GET", url)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["role"], body["bucket"], body["k"]) == ("retriever", "day", 3)
    rows = {(r["bucket"][:10], r["model_version_id"]): r for r in body["rows"]}
    assert set(rows) == {("2026-11-02", v1), ("2026-11-02", v2), ("2026-11-03", v1)}

    day_v1 = rows[("2026-11-02", v1)]
    assert (day_v1["requests"], day_v1["impressions"], day_v1["clicks"]) == (3, 12, 3)
    assert day_v1["ctr_at_k"] == 2 / 3  # p2 (rank 2) and p1 (rank 1) lie in the top 3; p4 does not
    assert day_v1["cart_rate"] == 1 / 3 and day_v1["purchase_rate"] == 1 / 3
    assert abs(day_v1["mrr"] - (1 / 2 + 0 + 1) / 3) < 1e-12
    assert day_v1["zero_click_rate"] == 1 / 3
    # from a histogram of 9%-wide buckets: within one bucket of the exact percentiles (20 and 29.8 ms)
    assert abs(day_v1["latency_p50_ms"] / 20.0 - 1) < 0.09 and abs(day_v1["latency_p99_ms"] / 29.8 - 1) < 0.09

    day_v2 = rows[("2026-11-02", v2)]
    assert (day_v2["requests"], day_v2["clicks"], day_v2["ctr_at_k"], day_v2["mrr"]) == (1, 1, 1.0, 1 / 3)
    next_day = rows[("2026-11-03", v1)]
    assert (next_day["requests"], next_day["impressions"], next_day["zero_click_rate"]) == (1, 2, 1.0)

    hourly = (await world.call("viewer", "GET", url + f"&bucket=hour&version={v1}")).json()["rows"]
    assert [(r["bucket"][11:16], r["requests"]) for r in hourly] == [("12:00", 2), ("20:00", 1), ("01:00", 1)]

    reranked = (await world.call("viewer", "GET", url + "&role=reranker")).json()["rows"]
    assert [(r["model_version_id"], r["requests"], r["purchase_rate"]) for r in reranked] == [(cross, 1, 1.0)]


async def test_online_metrics_refuse_a_bad_window_and_strangers(world: World) -> None:
    base = "/api/v1/projects/search-a/online-metrics"
    backwards = await world.call("viewer", "GET", f"{base}?from=2026-11-05T00:00:00Z&to=2026-11-01T00:00:00Z")
    assert backwards.status_code == 422 and backwards.json()["message"] == "from must be before to"
    too_long = await world.call(
        "viewer", "GET", f"{base}?bucket=hour&from=2026-01-01T00:00:00Z&to=2026-11-01T00:00:00Z"
    )
    assert too_long.status_code == 422 and "use bucket=day" in too_long.json()["message"]
    assert (await world.call("outsider", "GET", base)).status_code == 404
    empty = await world.call("viewer", "GET", base)
    assert empty.status_code == 200 and empty.json()["rows"] == []


async def test_closed_hours_come_from_rollups_that_catch_up_with_late_events(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    a = world.projects["search-a"]["id"]
    v1 = await add_version(sessionmaker, a, number=1)
    now = dt.datetime.now(dt.UTC)
    earlier, recent = now - dt.timedelta(hours=5), now - dt.timedelta(minutes=10)
    async with sessionmaker() as session:
        await session.execute(
            insert(Impression),
            [
                _impression(a, "old", v1, ["p1", "p2"], 8.0, earlier),
                _impression(a, "new", v1, ["p1"], 9.0, recent),
            ],
        )
        await session.execute(insert(Event), [_event(a, "new", "click", "p1")])
        await session.commit()
    url = f"/api/v1/projects/search-a/online-metrics?bucket=hour&version={v1}"

    def clicks(rows: list[dict[str, object]]) -> list[tuple[object, object]]:
        return [(r["requests"], r["clicks"]) for r in rows]

    first = (await world.call("viewer", "GET", url)).json()["rows"]
    assert clicks(first) == [(1, 0), (1, 1)]  # the closed hour rolled up on the way, the last one live
    async with sessionmaker() as session:
        hours = (await session.execute(select(OnlineRollupHour.hour))).scalars().all()
        assert earlier.replace(minute=0, second=0, microsecond=0) in hours
        assert not [h for h in hours if h > now - dt.timedelta(hours=1)]  # never a live hour
        await session.execute(insert(Event), [_event(a, "old", "click", "p2")])  # a late click
        await session.commit()
    assert clicks((await world.call("viewer", "GET", url)).json()["rows"]) == [(1, 0), (1, 1)]
    assert await roll_up_recent(settings, sessionmaker) > 0  # the api's periodic pass
    after = (await world.call("viewer", "GET", url)).json()["rows"]
    assert clicks(after) == [(1, 1), (1, 1)] and after[0]["mrr"] == 0.5
