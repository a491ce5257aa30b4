"""Simulated shoppers against a deployed zero-shot retriever: every search leaves an impression, the
online metrics count exactly the clicks the simulator made, and a seed gives the same shoppers again."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from scipy.stats import kendalltau
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.cli.sample_shop import Shop, generate
from services.cli.simulator import ClickModel, Judgments, SimulationOptions, shop, simulate
from shared.config import Settings
from shared.feedback import normalize_query
from shared.models import Impression
from tests.support.training import make_worker, run_worker, train, upload
from tests.support.world import World, bearer

SEARCHES = 10_000
MIN_IMPRESSIONS = 10
EXAMINE_DECAY = 1.5  # rank k is looked at with probability 1/k^1.5


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


async def _zero_shot_retriever(
    world: World, settings: Settings, tiny_model: Path, inference_client: httpx.AsyncClient, sample: Shop
) -> str:
    """The sample shop's catalog and judgments imported, its zero-shot retriever promoted and served."""
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
    return str(version)


def _judged(sample: Shop) -> Judgments:
    judged: Judgments = {}
    for query, product, grade in sample.judgments:
        judged.setdefault(query, {})[product] = float(grade)
    return judged


async def _all_written(
    sessionmaker: async_sessionmaker[AsyncSession], request_ids: set[str]
) -> dict[str, list[str]]:
    """The impressions of those requests, once all are written (in batches, off the requests' path)."""
    served: dict[str, list[str]] = {}
    for _ in range(200):
        async with sessionmaker() as session:
            served = dict(
                (await session.execute(select(Impression.request_id, Impression.product_ids))).tuples().all()
            )
        if request_ids <= set(served):
            break
        await asyncio.sleep(0.05)
    return served


async def test_simulated_searches_leave_impressions_and_online_metrics_count_their_clicks(
    world: World,
    settings: Settings,
    tiny_model: Path,
    inference_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    sample = generate(products=200, queries=60, seed=3)
    version = await _zero_shot_retriever(world, settings, tiny_model, inference_client, sample)
    judged = _judged(sample)
    options = SimulationOptions(
        inference_url="http://inference", key=world.keys["service"], project="search-a", judgments=judged,
        searches=300, shoppers=4, seed=11,
    )  # fmt: skip
    report = await simulate(options, client=inference_client)
    assert (len(report.searches), report.failed, report.events_refused) == (300, 0, 0)
    assert report.clicks > 0 and report.carts > 0

    served = await _all_written(sessionmaker, {s.request_id for s in report.searches})
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


async def test_feedback_from_simulated_searches_ranks_the_true_grades_better_than_click_through(
    world: World,
    settings: Settings,
    tiny_model: Path,
    inference_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """10,000 simulated searches on the sample shop's zero-shot retriever, a fifth of them explored: the
    feedback job's grades rank the shop's true grades (Kendall tau-b over the judged pairs shown at
    least ten times), and better than the raw click-through of the same logs does. The true grades tie
    a lot (three levels), so even a perfect ordering scores well below 1: the test prints that ceiling."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    sample = generate(products=200, queries=60, seed=3)
    await _zero_shot_retriever(world, settings, tiny_model, inference_client, sample)
    patched = await world.call(
        "owner", "PATCH", "/api/v1/projects/search-a", json={"exploration_percent": 20}
    )
    assert patched.status_code == 200 and patched.json()["exploration_percent"] == 20, patched.text
    for _ in range(300):  # inference hears of the change on Redis
        probe = await inference_client.post(
            "/recommend",
            json={"project": "search-a", "query": "probe"},
            headers=bearer(world.keys["service"]),
        )
        if probe.json()["explored"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("inference never explored")
    judged = _judged(sample)
    options = SimulationOptions(
        inference_url="http://inference", key=world.keys["service"], project="search-a", judgments=judged,
        searches=SEARCHES, shoppers=8, seed=5, model=ClickModel(examine_decay=EXAMINE_DECAY),
    )  # fmt: skip
    report = await simulate(options, client=inference_client)
    assert (len(report.searches), report.failed, report.events_refused) == (SEARCHES, 0, 0)
    served = await _all_written(sessionmaker, {s.request_id for s in report.searches})
    assert all(served[s.request_id] == s.shown for s in report.searches)  # every search, as shown
    metrics = await world.call("viewer", "GET", "/api/v1/projects/search-a/online-metrics")
    assert sum(r["clicks"] for r in metrics.json()["rows"]) == report.clicks

    submitted = await world.call(
        "member", "POST", "/api/v1/projects/search-a/feedback-jobs",
        json={"from": started.isoformat(), "to": (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat(),
              "min_impressions": MIN_IMPRESSIONS},
    )  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["job_type"] == "feedback"
    await run_worker(make_worker(settings))
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job["error"]
    written = {d["kind"]: d for d in job["result"]["dataset_versions"]}
    assert written["relevance"]["name"] == "feedback" and written["relevance"]["created"]
    assert written["sequences"]["name"] == "feedback-sequences"

    versions = await world.call(
        "member", "GET", f"/api/v1/datasets/{written['relevance']['dataset_id']}/versions"
    )
    version = versions.json()["items"][0]
    assert version["lineage"]["feedback_job_id"] == job_id
    stats = (await world.call("member", "GET", f"/api/v1/dataset-versions/{version['id']}/stats")).json()
    assert stats["stats"]["sources"] == {"feedback": written["relevance"]["rows"]}
    table = pq.read_table(settings.data_dir / version["tables"]["relevance"]["path"])
    graded = {
        (q, p): g
        for q, p, g in zip(table["query"].to_pylist(), table["product_id"].to_pylist(),
                           table["grade"].to_pylist(), strict=True)
    }  # fmt: skip

    truth = {(normalize_query(q), p): grade for q, grades in judged.items() for p, grade in grades.items()}
    shown: dict[tuple[str, str], int] = {}
    clicked: dict[tuple[str, str], int] = {}
    for search in report.searches:
        for product in search.shown:
            pair = (normalize_query(search.query), product)
            shown[pair] = shown.get(pair, 0) + 1
            clicked[pair] = clicked.get(pair, 0) + (product in search.clicks)
    pairs = sorted(pair for pair in graded if pair in truth)
    assert len(pairs) >= 100 and all(shown[pair] >= MIN_IMPRESSIONS for pair in pairs)
    feedback_tau = kendalltau([graded[p] for p in pairs], [truth[p] for p in pairs])[0]
    ctr_tau = kendalltau([clicked[p] / shown[p] for p in pairs], [truth[p] for p in pairs])[0]
    ceiling = kendalltau(range(len(pairs)), sorted(truth[p] for p in pairs))[0]  # no ties but the truth's
    print(
        f"{SEARCHES} searches, {len(pairs)} judged pairs shown >= {MIN_IMPRESSIONS} times: Kendall tau-b "
        f"feedback {feedback_tau:.3f}, raw click-through {ctr_tau:.3f}, a perfect ordering {ceiling:.3f}"
    )
    assert feedback_tau >= 0.5
    # both sit under the ties' ceiling; raw click-through, fooled by position, stays further from it. By how
    # much varies (exploration and the shoppers' interleaving are not seeded end to end): 0.060, 0.043,
    # 0.040 and 0.018 below the feedback grades in four runs, so the margin asked is 0.01.
    assert ctr_tau < feedback_tau - 0.01 and ceiling - ctr_tau > ceiling - feedback_tau

    # the same window again: the same rows, so the version already made is named, not a twin
    again = await world.call(
        "member", "POST", "/api/v1/projects/search-a/feedback-jobs",
        json={"from": job["hyperparameters"]["start"], "to": job["hyperparameters"]["end"],
              "min_impressions": MIN_IMPRESSIONS},
    )  # fmt: skip
    await run_worker(make_worker(settings))
    rerun = (await world.call("member", "GET", f"/api/v1/training-jobs/{again.json()['id']}")).json()
    assert rerun["status"] == "succeeded", rerun["error"]
    twin = {d["kind"]: d for d in rerun["result"]["dataset_versions"]}["relevance"]
    assert (twin["dataset_version_id"], twin["created"]) == (
        written["relevance"]["dataset_version_id"],
        False,
    )
