"""Labelling queues: built by a real selection job, worked by two labellers (API and CLI), closed into a
dataset version that LoRA models train on; who may see and do what; what is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from shared.config import Settings
from shared.models import Event, Impression, LabelingItem
from tests.support.data import shop_data
from tests.support.processes import CLI, cli_env, recforge
from tests.support.training import PROJECT as P
from tests.support.training import make_worker, run_worker, train, upload
from tests.support.world import World

KINDS = ["drill", "hammer", "hose", "lamp", "saw", "paint", "ladder", "faucet", "tile", "fan"]


def oracle(query: str, product_text: str) -> int:
    """The grade a careful labeller gives shop_data's pairs: 3 when the product is the query's kind."""
    kind = next(k for k in KINDS if k in query)
    return 3 if kind in product_text.lower() else 0


async def _shop(world: World, settings: Settings, tiny_model: Path) -> tuple[str, str, str]:
    """The shop's data and a tiny retriever and reranker trained on it."""
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    catalog, judgments = shop_data(products=40, queries=30)
    await upload(world, "catalog.csv", catalog, "catalog")
    judged = await upload(world, "judgments.csv", judgments, "relevance")
    quick = {"max_steps": 4, "batch_size": 16, "max_length": 24}
    retriever, reranker = await train(
        world,
        settings,
        [
            {
                "job_type": t,
                "dataset_version_id": judged,
                "base_model": str(tiny_model),
                "hyperparameters": quick,
            }
            for t in ("bi_encoder", "cross_encoder")
        ],
    )
    return judged, retriever, reranker


async def _label_all(world: World, who: str, queue_id: str) -> int:
    answered = 0
    while True:
        nxt = (await world.call(who, "GET", f"/api/v1/labeling-queues/{queue_id}/next")).json()
        if nxt["item"] is None:
            return answered
        item = nxt["item"]
        body: dict[str, Any] = {"grade": oracle(item["query"], item["product_text"])}
        if answered == 0:
            body = {"skip": True, "reason": "the product page does not load"}
        done = await world.call(
            who, "POST", f"/api/v1/labeling-queues/{queue_id}/items/{item['id']}/label", json=body
        )
        assert done.status_code == 200, done.text
        answered += 1
        assert done.json()["done"] == answered


@pytest.mark.slow
async def test_a_queue_is_chosen_labelled_by_two_people_closed_and_trained_on(
    world: World, settings: Settings, tiny_model: Path, api_server: str
) -> None:
    judged, retriever, reranker = await _shop(world, settings, tiny_model)
    labellers = [world.users["maintainer"], world.users["member"]]
    created = await world.call(
        "member",
        "POST",
        f"{P}/labeling-queues",
        json={
            "name": "drills and saws",
            "strategy": "committee",
            "budget": 8,
            "pool": "dataset",
            "dataset_version_id": judged,
            "split": "all",
            "max_queries": 10,
            "candidates_per_query": 6,
            "k": 3,
            "labellers": labellers,
            "labels_per_item": 2,
            "base_dataset_version_id": judged,
            "retriever_version_id": retriever,
            "reranker_version_id": reranker,
        },
    )
    assert created.status_code == 202, created.text
    queue = created.json()
    queue_id = queue["id"]
    assert queue["status"] == "building" and queue["selection_job_id"]
    nothing_yet = await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}/next")
    assert nothing_yet.json()["item"] is None and nothing_yet.json()["status"] == "building"

    await run_worker(make_worker(settings))
    queue = (await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}")).json()
    assert queue["status"] == "open", queue["error"]
    selection = queue["report"]["selection"]
    assert selection["rankers"] == ["bm25", "retriever", "reranker"]
    assert selection["selected"] == 8 and selection["judged_left_out"] > 0
    progress = queue["progress"]
    assert (progress["items"], progress["labels_needed"], progress["pending"]) == (8, 16, 16)
    assert {row["user_id"] for row in progress["by_labeller"]} == set(labellers)
    assert all(row["assigned"] == 8 for row in progress["by_labeller"])
    _, judgments = shop_data(products=40, queries=30)
    already = {tuple(line.split(",")[:2]) for line in judgments.splitlines()[1:]}
    assert world.sessionmaker is not None
    async with world.sessionmaker() as session:
        items = (
            (await session.execute(select(LabelingItem).where(LabelingItem.queue_id == uuid.UUID(queue_id))))
            .scalars()
            .all()
        )
    assert len(items) == 8 and not {(i.query, i.product_id) for i in items} & already  # nothing judged twice
    assert all(set(i.signals) == {"bm25", "retriever", "reranker"} for i in items)

    # who may see and do what
    for outsider in ("outsider", "owner_b"):
        assert (await world.call(outsider, "GET", f"/api/v1/labeling-queues/{queue_id}")).status_code == 404
        assert (
            await world.call(outsider, "GET", f"/api/v1/labeling-queues/{queue_id}/next")
        ).status_code == 404
    assert (await world.call("viewer", "GET", f"/api/v1/labeling-queues/{queue_id}/next")).status_code == 403
    first = (await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}/next")).json()["item"]
    url = f"/api/v1/labeling-queues/{queue_id}/items/{first['id']}/label"
    assert (await world.call("owner", "POST", url, json={"grade": 1})).status_code == 403  # not a labeller
    assert (await world.call("outsider", "POST", url, json={"grade": 1})).status_code == 404
    off_scale = await world.call("member", "POST", url, json={"grade": 7})
    assert off_scale.status_code == 422 and "from 0 to 3" in off_scale.json()["message"]
    no_reason = await world.call("member", "POST", url, json={"skip": True})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    both = await world.call("member", "POST", url, json={"grade": 1, "skip": True, "reason": "x"})
    assert both.status_code == 422
    early = await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}")
    assert early.json()["agreement"]["pairs_labelled_twice"] == 0

    # one labeller through the API, the other in a terminal
    assert await _label_all(world, "member", queue_id) == 8
    env = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["maintainer"])
    answers = "9\n" + "".join(f"{g}\n" for g in (3, 0, 3, 0, 3, 0, 3)) + "s\nunclear query\n"
    cli = await asyncio.create_subprocess_exec(
        *CLI, "label", queue_id, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(cli.communicate(answers.encode()), timeout=120)
    assert cli.returncode == 0, stderr.decode()
    assert "press a grade from 0 to 3" in stderr.decode()  # the 9
    assert "drill" in stdout.decode() or "saw" in stdout.decode() or "query" in stdout.decode()
    assert "done: you have answered all 8 of your pairs" in stdout.decode()

    queue = (await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}")).json()
    assert queue["progress"]["pending"] == 0 and queue["progress"]["skipped"] == 2
    agreement = queue["agreement"]
    assert agreement["labellers"] == 2 and 1 <= agreement["pairs_labelled_twice"] <= 7
    assert -1 <= (agreement["krippendorff_alpha"] or 0) <= 1

    assert (
        await world.call("viewer", "POST", f"/api/v1/labeling-queues/{queue_id}/close", json={})
    ).status_code == 403
    member_env = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["member"])
    shown = await asyncio.to_thread(recforge, "labeling", "show", queue_id, env=member_env)
    assert shown.returncode == 0, shown.stderr
    assert "agreement on" in shown.stdout and "Krippendorff's alpha" in shown.stdout
    closed = await asyncio.to_thread(
        recforge, "labeling", "close", queue_id, "--dataset-name", "judged-by-us", env=member_env
    )
    assert closed.returncode == 0, closed.stderr
    queue = (await world.call("member", "GET", f"/api/v1/labeling-queues/{queue_id}")).json()
    assert f"dataset version: {queue['dataset_version_id']}" in closed.stdout
    assert queue["status"] == "closed" and queue["agreement"] == agreement
    version = (
        await world.call("member", "GET", f"/api/v1/dataset-versions/{queue['dataset_version_id']}")
    ).json()
    lineage = version["lineage"]
    assert lineage["labeling_queue_id"] == queue_id and lineage["strategy"] == "committee"
    assert {person["user_id"] for person in lineage["labellers"]} == set(labellers)
    assert lineage["base_dataset_version_id"] == judged and lineage["pairs_skipped"] == 2
    rows = pq.read_table(settings.data_dir / version["tables"]["relevance"]["path"]).to_pylist()
    labelled = {(i.query, i.product_id) for i in items}
    new_rows = [r for r in rows if (r["query"], r["product_id"]) in labelled]
    assert len(new_rows) == 8  # every pair graded by at least one of the two
    assert len(rows) == 8 + len(already)
    assert all(0 <= r["grade"] <= 3 for r in new_rows)
    again = await world.call("member", "POST", f"/api/v1/labeling-queues/{queue_id}/close", json={})
    assert again.status_code == 409
    late = await world.call("member", "POST", url, json={"grade": 2})
    assert late.status_code == 409 and "closed" in late.json()["message"]
    listed = (await world.call("viewer", "GET", f"{P}/labeling-queues")).json()["items"]
    assert [q["id"] for q in listed] == [queue_id]

    # the labels train LoRA models, exported with their parity checks
    lora = {"adapter": "lora", "lora_r": 4, "max_steps": 4, "batch_size": 16, "max_length": 24}
    versions = await train(
        world, settings,
        [{"job_type": t, "dataset_version_id": version["id"], "base_model": str(tiny_model), "hyperparameters": lora}
         for t in ("bi_encoder", "cross_encoder")],
    )  # fmt: skip
    for version_id in versions:
        model = (await world.call("member", "GET", f"/api/v1/model-versions/{version_id}")).json()
        assert model["dataset_version_id"] == version["id"]
        assert set(model["git"]) == {"commit", "branch", "remote", "dirty"}  # the code that trained it
        assert model["compute"]["export"]["parity_max_abs_diff"] <= 1e-4


@pytest.mark.slow
async def test_a_queue_from_searches_asks_the_click_model_and_shares_by_load(
    world: World, settings: Settings, tiny_model: Path, api_server: str
) -> None:
    _, retriever, _ = await _shop(world, settings, tiny_model)
    project_id = uuid.UUID(world.projects["search-a"]["id"])
    now = dt.datetime.now(dt.UTC)
    assert world.sessionmaker is not None
    async with world.sessionmaker() as session:
        for n in range(30):
            at = now - dt.timedelta(hours=1, seconds=n)
            session.add(
                Impression(project_id=project_id, request_id=f"r{n}", endpoint="recommend", query="Cordless Drill",
                           product_ids=["p0", "p10", "p20", "p1"], latency_ms=3.0, served_at=at)
            )  # fmt: skip
            session.add(Event(project_id=project_id, request_id=f"r{n}", event_type="click", product_id="p10",
                              occurred_at=at))  # fmt: skip
        await session.commit()
    body = {
        "name": "searches",
        "strategy": "random",
        "budget": 3,
        "pool": "impressions",
        "from": (now - dt.timedelta(days=1)).isoformat(),
        "labellers": [world.users["maintainer"], world.users["member"]],
        "assignment": "least_loaded",
        "retriever_version_id": retriever,
    }
    first = await world.call("member", "POST", f"{P}/labeling-queues", json=body)
    assert first.status_code == 202, first.text
    await run_worker(make_worker(settings))
    queue = (await world.call("member", "GET", f"/api/v1/labeling-queues/{first.json()['id']}")).json()
    assert queue["status"] == "open", queue["error"]
    selection = queue["report"]["selection"]
    assert selection["rankers"] == ["bm25", "retriever", "clicks"] and selection["queries"] == 1
    assert selection["pool"]["searches"] == 30
    load = {row["user_id"]: row["pending"] for row in queue["progress"]["by_labeller"]}
    assert sorted(load.values()) == [1, 2]  # three pairs, one label each, the lighter load first

    env = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["member"])
    no_pool = await asyncio.to_thread(recforge, "labeling", "create", "-p", "search-a", "--name", "x",
                                      "--budget", "1", env=env)  # fmt: skip
    assert no_pool.returncode == 1 and "name the pool" in no_pool.stderr
    stranger = await asyncio.to_thread(
        recforge, "labeling", "create", "-p", "search-a", "--name", "x", "--budget", "1", "--impressions",
        "--labeller", "nobody@example.com", env=env,
    )  # fmt: skip
    assert stranger.returncode == 1 and "nobody@example.com is not a member" in stranger.stderr
    made = await asyncio.to_thread(
        recforge, "labeling", "create", "-p", "search-a", "--name", "more", "--budget", "1", "--strategy",
        "random", "--impressions", "--days", "1", "--labeller", "maintainer@example.com", "--labeller",
        "member@example.com", "--assignment", "least_loaded", "--retriever", retriever, "--no-watch", "-q",
        env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    second_id = made.stdout.strip()
    await run_worker(make_worker(settings))
    again = (await world.call("member", "GET", f"/api/v1/labeling-queues/{second_id}")).json()
    [given] = again["progress"]["by_labeller"]
    assert load[str(given["user_id"])] == 1  # to whoever had less waiting

    nothing = await world.call("member", "POST", f"/api/v1/labeling-queues/{queue['id']}/close", json={})
    assert nothing.status_code == 409 and "nothing is labelled" in nothing.json()["message"]


async def test_queues_refuse_what_cannot_work(world: World, settings: Settings) -> None:
    catalog, judgments = shop_data(products=10, queries=5)
    body = {"name": "q", "budget": 5, "pool": "dataset"}
    no_catalog = await world.call("member", "POST", f"{P}/labeling-queues", json=body)
    assert no_catalog.status_code == 409 and "no catalog" in no_catalog.json()["message"]
    await upload(world, "catalog.csv", catalog, "catalog")
    judged = await upload(world, "judgments.csv", judgments, "relevance")
    catalog_version = (await world.call("member", "GET", f"{P}/datasets")).json()["items"]
    catalog_id = next(d for d in catalog_version if d["kind"] == "catalog")["latest_version"]["id"]

    async def refused(who: str, status: int, text: str, **more: Any) -> None:
        response = await world.call(who, "POST", f"{P}/labeling-queues", json={**body, **more})
        assert response.status_code == status, response.text
        assert text in response.text, response.json()

    await refused("member", 422, "names its relevance dataset version")
    await refused("member", 422, "not catalog", dataset_version_id=catalog_id)
    await refused("member", 422, "uncertainty sampling", dataset_version_id=judged, strategy="uncertainty")
    await refused("member", 422, "labels per pair", dataset_version_id=judged, labels_per_item=2)
    await refused("member", 422, "viewers read", dataset_version_id=judged, labellers=[world.users["viewer"]])
    await refused(
        "member", 422, "not a member", dataset_version_id=judged, labellers=[world.users["outsider"]]
    )
    await refused(
        "member",
        422,
        "no such model version",
        dataset_version_id=judged,
        reranker_version_id=str(uuid.uuid4()),
    )
    await refused("member", 422, "max_grade", dataset_version_id=judged, min_grade=3, max_grade=3)
    await refused("viewer", 403, "may not", dataset_version_id=judged)
    typo = await world.call("member", "POST", f"{P}/labeling-queues", json={**body, "budjet": 5})
    assert typo.status_code == 422
    job = await world.call("member", "POST", f"{P}/training-jobs", json={"job_type": "labeling"})
    assert job.status_code == 422 and "labeling-queues" in job.json()["message"]
    assert (await world.call("outsider", "GET", f"{P}/labeling-queues")).status_code == 404
    assert (await world.call("member", "GET", f"/api/v1/labeling-queues/{uuid.uuid4()}")).status_code == 404


async def test_a_selection_that_fails_leaves_the_queue_failed_with_the_reason(
    world: World, settings: Settings
) -> None:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    catalog, _ = shop_data(products=10, queries=5)
    await upload(world, "catalog.csv", catalog, "catalog")
    body = {"name": "nobody searched", "budget": 5, "strategy": "random", "pool": "impressions"}
    created = await world.call("member", "POST", f"{P}/labeling-queues", json=body)
    assert created.status_code == 202, created.text
    await run_worker(make_worker(settings))
    queue = (await world.call("member", "GET", f"/api/v1/labeling-queues/{created.json()['id']}")).json()
    assert queue["status"] == "failed" and "nobody searched in this window" in queue["error"]
    assert queue["progress"]["items"] == 0
    closing = await world.call("member", "POST", f"/api/v1/labeling-queues/{queue['id']}/close", json={})
    assert closing.status_code == 409 and "failed" in closing.json()["message"]
