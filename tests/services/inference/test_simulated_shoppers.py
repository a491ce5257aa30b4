"""Simulated shoppers against a deployed zero-shot retriever: every search leaves an impression, the
online metrics count exactly the clicks the simulator made, and a seed gives the same shoppers again."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.cli.sample_shop import generate
from services.cli.simulator import ClickModel, SimulationOptions, shop, simulate
from shared.config import Settings
from shared.models import Impression
from tests.support.training import train, upload
from tests.support.world import World, bearer


def test_shoppers_look_less_far_down_and_click_the_better_products_more() -> None:
    model = ClickModel()
    assert [round(model.examine(k), 3) for k in (1, 2, 4)] == [1.0, 0.5, 0.25]
    assert model.attract(0) == model.click_floor and model.attract(3) == 1.0
    assert model.attract(1) < model.attract(2) < model.attract(3)
    judged = {"a": 3.0, "b": 0.0}
    runs = [shop(["a", "b"], judged, model, random.Random(f"7:{n}")) for n in range(2000)]
    clicked_a = sum("a" in clicks for clicks, _, _ in runs) / len(runs)
    clicked_b = sum("b" in clicks for clicks, _, _ in runs) / len(runs)
    assert abs(clicked_a - 1.0) < 1e-9 and abs(clicked_b - 0.5 * 0.02) < 0.01
    assert runs == [shop(["a", "b"], judged, model, random.Random(f"7:{n}")) for n in range(2000)]


async def _impressions(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Impression))).scalar_one())


async def test_simulated_searches_leave_impressions_and_online_metrics_count_their_clicks(
    world: World,
    settings: Settings,
    tiny_model: Path,
    inference_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    sample = generate(products=200, queries=60, seed=3)
    await world.call("owner", "PATCH", "/api/v1/projects/search-a", json={"budget": {"cpu_hours": 5}})
    await upload(world, "catalog.csv", sample.catalog_csv(), "catalog")
    relevance = await upload(world, "judgments.csv", sample.judgments_csv(), "relevance")
    [version] = await train(
        world,
        settings,
        [{"job_type": "bi_encoder", "dataset_version_id": relevance, "base_model": str(tiny_model),
          "hyperparameters": {"max_steps": 0, "max_length": 32}}],
    )  # fmt: skip
    promoted = await world.call("owner", "POST", f"/api/v1/model-versions/{version}/promote")
    assert promoted.status_code == 200, promoted.text
    for _ in range(300):
        if (await inference_client.get("/readyz")).status_code == 200:
            probe = await inference_client.post(
                "/recommend",
                json={"project": "search-a", "query": "drill"},
                headers=bearer(world.keys["service"]),
            )
            if probe.status_code == 200:
                break
        await asyncio.sleep(0.1)
    judged: dict[str, dict[str, float]] = {}
    for query, product, grade in sample.judgments:
        judged.setdefault(query, {})[product] = float(grade)
    options = SimulationOptions(
        inference_url="http://inference", key=world.keys["service"], project="search-a", judgments=judged,
        searches=300, shoppers=4, seed=11,
    )  # fmt: skip
    report = await simulate(options, client=inference_client)
    assert (len(report.searches), report.failed, report.events_refused) == (300, 0, 0)
    assert report.clicks > 0 and report.carts > 0

    searched = {s.request_id for s in report.searches}
    for _ in range(200):  # impressions are written in batches, off the requests' path
        async with sessionmaker() as session:
            served = dict(
                (await session.execute(select(Impression.request_id, Impression.product_ids))).tuples().all()
            )
        if searched <= set(served):
            break
        await asyncio.sleep(0.05)
    wrong = [
        (s.request_id, s.shown, served[s.request_id])
        for s in report.searches
        if served[s.request_id] != s.shown
    ]
    assert not wrong, wrong[:3]  # every search, as it was shown
    total = await _impressions(sessionmaker)  # the searches and the probes before them

    metrics = await world.call("viewer", "GET", f"/api/v1/projects/search-a/online-metrics?version={version}")
    assert metrics.status_code == 200, metrics.text
    rows = metrics.json()["rows"]
    assert sum(r["requests"] for r in rows) == total
    assert sum(r["clicks"] for r in rows) == report.clicks  # exactly what the shoppers clicked
    assert round(sum(r["cart_rate"] * r["requests"] for r in rows)) == report.carts

    # the same seed, the same shoppers: the same queries, and the same clicks wherever the service showed
    # the same list (concurrent queries share a model batch, so a near tie may order differently)
    again = await simulate(options, client=inference_client)
    assert [s.query for s in again.searches] == [s.query for s in report.searches]
    same = [(a, b) for a, b in zip(again.searches, report.searches, strict=True) if a.shown == b.shown]
    assert len(same) >= 0.9 * len(report.searches)
    assert all((a.clicks, a.carts, a.purchases) == (b.clicks, b.carts, b.purchases) for a, b in same)
