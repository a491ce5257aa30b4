"""The inference service over versions the real trainer made (a tiny random BERT, exported to ONNX)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.models import Event, Impression
from shared.onnxmodel import OnnxTextModel
from tests.support.training import PROJECT as P
from tests.support.training import train as _train
from tests.support.training import upload as _upload
from tests.support.world import World, bearer

KINDS = ["drill", "hammer", "hose", "lamp", "saw", "paint", "ladder", "faucet", "tile", "fan"]


def catalog_csv(products: int = 80) -> str:
    rows = ["product_id,title,brand,category,price,in_stock"]
    for i in range(products):
        kind = KINDS[i % 10]
        rows.append(
            f"p{i},{kind.title()} model {i},Acme,Tools > {kind.title()},{i * 1.5:.2f},{'no' if i % 20 == 10 else 'yes'}"
        )
    return "\n".join(rows) + "\n"


def judgments_csv() -> str:
    rows = ["query,product_id,grade"]
    for q in range(60):
        kind = KINDS[q % 10]
        for i in range(q % 7, 80, 9):
            rows.append(f"{kind} for home {q},p{i},{3 if KINDS[i % 10] == kind else 1}")
    return "\n".join(dict.fromkeys(rows)) + "\n"


async def _service_key(w: World) -> dict[str, str]:
    return bearer(w.keys["service"])


async def _wait_loaded(client: httpx.AsyncClient) -> None:
    for _ in range(600):
        ready = await client.get("/readyz")
        if ready.status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"inference never became ready: {ready.text}")


@pytest.fixture
async def deployed(world: World, settings: Settings, tiny_model: Path) -> dict[str, Any]:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    await _upload(world, "catalog.csv", catalog_csv(), "catalog")
    relevance = await _upload(world, "judgments.csv", judgments_csv(), "relevance")
    intents = "\n".join(
        json.dumps({"text": t, "label": label})
        for i in range(40)
        for t, label in ((f"where is my order {i}", "order_status"), (f"refund item {i} please", "refund"))
    )
    labeled = await _upload(world, "intents.jsonl", intents + "\n", "labeled_text")
    common = {"base_model": str(tiny_model)}
    bi, cross, classifier = await _train(
        world,
        settings,
        [
            {"job_type": "bi_encoder", "dataset_version_id": relevance, **common,
             "hyperparameters": {"max_steps": 30, "batch_size": 16, "max_length": 32, "learning_rate": 1e-3}},
            {"job_type": "cross_encoder", "dataset_version_id": relevance, **common,
             "hyperparameters": {"max_steps": 10, "batch_size": 16, "max_length": 32}},
            {"job_type": "classifier", "dataset_version_id": labeled, **common,
             "hyperparameters": {"epochs": 5, "batch_size": 16, "max_length": 16, "learning_rate": 1e-3}},
        ],
    )  # fmt: skip
    for version in (bi, cross, classifier):
        promoted = await world.call("owner", "POST", f"/api/v1/model-versions/{version}/promote")
        assert promoted.status_code == 200, promoted.text
    return {"bi": bi, "cross": cross, "classifier": classifier}


def _model(settings: Settings, version: dict[str, Any], name: str) -> OnnxTextModel:
    path = settings.data_dir / version["artifacts"][name]["path"]
    return OnnxTextModel(path, path.parent, max_length=version["config"]["max_length"])


async def test_every_endpoint_answers_from_the_deployed_versions(
    world: World,
    settings: Settings,
    deployed: dict[str, Any],
    inference_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    client = inference_client
    await _wait_loaded(client)
    key = await _service_key(world)
    bi = (await world.call("member", "GET", f"/api/v1/model-versions/{deployed['bi']}")).json()

    # /recommend by query: hybrid retrieval, names the version, honours k and filters
    answer = await client.post(
        "/recommend", json={"project": "search-a", "query": "drill", "k": 5}, headers=key
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == deployed["bi"] and body["reranker_version"] is None
    assert len(body["items"]) == 5 and body["took_ms"] > 0 and body["request_id"]
    assert body["items"][0]["title"].startswith("Drill")  # BM25 finds the word even if the tiny model cannot
    # where the time went, stage by stage (W3C Server-Timing), each within the total
    stages = {
        name: float(dur.removeprefix("dur="))
        for name, dur in (part.strip().split(";") for part in answer.headers["server-timing"].split(","))
    }
    assert set(stages) >= {
        "parse", "filters", "embed_queue", "embed_tokenize", "embed_run", "ann", "bm25", "fusion",
        "items", "log", "serialise", "total",
    }  # fmt: skip
    assert all(0 <= v <= stages["total"] + 0.01 for v in stages.values())  # bm25 runs beside embed
    filtered = await client.post(
        "/recommend",
        json={"project": "search-a", "query": "drill", "k": 50,
              "filters": {"category": "tools > drill", "price_max": 60, "in_stock": True}},
        headers=key,
    )  # fmt: skip
    items = filtered.json()["items"]
    assert items and all(it["title"].startswith("Drill") for it in items)
    assert {it["product_id"] for it in items} == {"p0", "p20", "p40"}  # p10, p30 are out of stock
    assert filtered.json()["warnings"] == []
    # a level is split at " > " or "/", whatever the case and spaces; a category no product is in says so
    for spelled in ("Tools/Drill", "TOOLS>drill", " tools /  drill "):
        same = await client.post(
            "/recommend",
            json={"project": "search-a", "query": "drill", "k": 50,
                  "filters": {"category": spelled, "price_max": 60, "in_stock": True}},
            headers=key,
        )  # fmt: skip
        assert same.json()["items"] == items, spelled
    unknown = await client.post(
        "/recommend",
        json={"project": "search-a", "query": "drill", "filters": {"category": "Tools > Drills"}},
        headers=key,
    )
    assert unknown.status_code == 200 and unknown.json()["items"] == []
    assert unknown.json()["warnings"] == [
        "no product is in category 'Tools > Drills'; did you mean 'tools > drill'?"
    ]
    # one retriever alone: BM25 ranks by its own scores, dense by cosine; lexical needs a query
    alone = {}
    for mode in ("lexical", "dense"):
        answer = await client.post(
            "/recommend",
            json={"project": "search-a", "query": "drill", "k": 5, "retrieval": mode},
            headers=key,
        )
        assert answer.status_code == 200, answer.text
        alone[mode] = [it["score"] for it in answer.json()["items"]]
        assert alone[mode] == sorted(alone[mode], reverse=True)
        if mode == "lexical":  # only drills hold the word
            assert all(it["title"].startswith("Drill") for it in answer.json()["items"])
    assert min(alone["lexical"]) > 2 / 61  # BM25 scores, not reciprocal-rank sums
    assert all(-1.0 <= s <= 1.0 for s in alone["dense"])
    refused = await client.post(
        "/recommend", json={"project": "search-a", "user_id": "u1", "retrieval": "lexical"}, headers=key
    )
    assert refused.status_code == 422
    reranked = await client.post(
        "/recommend", json={"project": "search-a", "query": "drill", "k": 5, "rerank": True}, headers=key
    )
    assert reranked.json()["reranker_version"] == deployed["cross"]

    # /recommend for a user: the history becomes one vector; seen items never come back
    history = ["p1", "p2", "p3"]
    user = await client.post(
        "/recommend", json={"project": "search-a", "user_id": "u1", "history": history, "k": 20}, headers=key
    )
    assert user.status_code == 200, user.text
    ids = [it["product_id"] for it in user.json()["items"]]
    assert len(ids) == 20 and not set(ids) & set(history)

    # /v1/embeddings with the openai client: the same vectors as the int8 graph gives directly
    import openai

    oa = openai.AsyncOpenAI(base_url="http://inference/v1", api_key=world.keys["service"], http_client=client)
    embedded = await oa.embeddings.create(model="search-a", input=["cordless drill", "garden hose"])
    served_file = "model_int8" if bi["artifacts"]["model_int8"]["servable"] else "model"
    reference = _model(settings, bi, served_file).embed(["cordless drill", "garden hose"])
    np.testing.assert_allclose(np.array([d.embedding for d in embedded.data]), reference, atol=1e-5)
    assert embedded.usage.prompt_tokens > 0

    # /score and /rerank use the deployed cross-encoder
    scores = await client.post(
        "/score", json={"project": "search-a", "query": "drill", "product_ids": ["p0", "p1"]}, headers=key
    )
    assert scores.status_code == 200 and scores.json()["model_version"] == deployed["cross"]
    documents = ["Drill model 0", "Hose model 2", "Lamp model 3"]
    ranked = await client.post(
        "/rerank",
        json={"project": "search-a", "query": "drill", "documents": documents, "top_n": 2},
        headers=key,
    )
    results = ranked.json()["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    cross = (await world.call("member", "GET", f"/api/v1/model-versions/{deployed['cross']}")).json()
    cross_file = "model_int8" if cross["artifacts"]["model_int8"]["servable"] else "model"
    logits = _model(settings, cross, cross_file).score_pairs([("drill", d) for d in documents])
    assert [r["index"] for r in results] == list(np.argsort(-logits, kind="stable")[:2])
    # given the product each document is, the ranking is logged as an impression under the request id
    logged = await client.post(
        "/rerank",
        json={"project": "search-a", "query": "drill", "documents": documents, "top_n": 2,
              "product_ids": ["p0", "p2", "p3"]},
        headers={**key, "X-Request-ID": "rerank-7"},
    )  # fmt: skip
    assert logged.status_code == 200, logged.text
    rerank_order = [["p0", "p2", "p3"][r["index"]] for r in logged.json()["results"]]
    mismatched = await client.post(
        "/rerank",
        json={"project": "search-a", "query": "drill", "documents": documents, "product_ids": ["p0"]},
        headers=key,
    )
    assert mismatched.status_code == 422
    assert "product_ids has 1 ids for 3 documents" in mismatched.text

    # /classify
    labels = await client.post(
        "/classify",
        json={"project": "search-a", "texts": ["where is my order 3", "refund item 7 please"]},
        headers=key,
    )
    assert labels.status_code == 200, labels.text
    got = labels.json()["results"]
    classifier = (
        await world.call("member", "GET", f"/api/v1/model-versions/{deployed['classifier']}")
    ).json()
    served = "model_int8" if classifier["artifacts"]["model_int8"]["servable"] else "model"
    direct = _model(settings, classifier, served).classify_logits(
        ["where is my order 3", "refund item 7 please"]
    )
    assert [r["label"] for r in got] == [classifier["config"]["labels"][i] for i in direct.argmax(axis=1)]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in got)

    # /events tie each event to the version that served its request
    stored = await client.post(
        "/events",
        json={"project": "search-a", "events": [
            {"event": "impression", "request_id": body["request_id"], "product_id": body["items"][0]["product_id"],
             "user_id": "u1", "position": 0},
            {"event": "purchase", "product_id": "p7", "user_id": "u1", "value": 19.9},
        ]},
        headers=key,
    )  # fmt: skip
    assert stored.status_code == 202 and stored.json() == {"accepted": 2, "duplicates": 0}
    async with sessionmaker() as session:
        rows = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
    assert [str(r.model_version_id) if r.model_version_id else None for r in rows] == [deployed["bi"], None]
    # a stored history serves a user who sends none
    stored_user = await client.post(
        "/recommend", json={"project": "search-a", "user_id": "u1", "k": 10}, headers=key
    )
    assert "p7" not in [it["product_id"] for it in stored_user.json()["items"]]

    # every /recommend left an impression: what was served, in order, by which versions, for whom
    answered = stored_user.json()
    for _ in range(100):  # written in batches, off the request's path
        async with sessionmaker() as session:
            found = (
                await session.execute(
                    select(Impression).where(Impression.request_id == answered["request_id"])
                )
            ).scalar_one_or_none()
        if found is not None:
            break
        await asyncio.sleep(0.1)
    assert found is not None
    assert found.product_ids == [it["product_id"] for it in answered["items"]]
    assert (str(found.model_version_id), found.reranker_version_id, found.arm) == (
        deployed["bi"],
        None,
        "primary",
    )
    assert (found.endpoint, found.query, found.user_id) == ("recommend", None, "u1") and found.latency_ms > 0
    async with sessionmaker() as session:
        reranked = (
            (await session.execute(select(Impression).where(Impression.reranker_version_id.is_not(None))))
            .scalars()
            .all()
        )
    assert [(str(r.reranker_version_id), r.query) for r in reranked] == [(deployed["cross"], "drill")]
    async with sessionmaker() as session:
        by_rerank = (
            await session.execute(select(Impression).where(Impression.endpoint == "rerank"))
        ).scalar_one()
    assert (by_rerank.request_id, by_rerank.product_ids) == ("rerank-7", rerank_order)
    assert str(by_rerank.model_version_id) == deployed["cross"]

    metrics = await client.get("/metrics", headers=bearer(world.admin))
    assert 'recforge_inference_request_seconds_count{model_version="' in metrics.text
    assert 'recforge_inference_batch_size_bucket{le="1.0",model="search-a v' in metrics.text  # by slug
    assert "recforge_inference_impressions_written_total" in metrics.text


async def test_callers_need_a_service_key_of_the_project(
    world: World, deployed: dict[str, Any], inference_client: httpx.AsyncClient
) -> None:
    await _wait_loaded(inference_client)
    body = {"project": "search-a", "query": "drill"}
    assert (await inference_client.post("/recommend", json=body)).status_code == 401
    assert (
        await inference_client.post("/recommend", json=body, headers=bearer("rf_nope"))
    ).status_code == 401
    person = await inference_client.post("/recommend", json=body, headers=bearer(world.keys["owner"]))
    assert person.status_code == 403
    admin = await inference_client.post("/recommend", json=body, headers=bearer(world.admin))
    assert admin.status_code == 200
    unknown = await inference_client.post(
        "/recommend", json={**body, "project": "nope"}, headers=bearer(world.keys["service"])
    )
    assert unknown.status_code == 404
    bad = await inference_client.post(
        "/recommend", json={"project": "search-a"}, headers=bearer(world.keys["service"])
    )
    assert bad.status_code == 422


async def test_a_promotion_under_load_fails_no_request(
    world: World,
    settings: Settings,
    deployed: dict[str, Any],
    inference_client: httpx.AsyncClient,
    tiny_model: Path,
) -> None:
    client = inference_client
    await _wait_loaded(client)
    key = bearer(world.keys["service"])
    relevance = (await world.call("member", "GET", f"/api/v1/model-versions/{deployed['bi']}")).json()[
        "dataset_version_id"
    ]
    (second,) = await _train(
        world,
        settings,
        [{"job_type": "bi_encoder", "dataset_version_id": relevance, "base_model": str(tiny_model),
          "hyperparameters": {"max_steps": 5, "batch_size": 16, "max_length": 32, "seed": 7}}],
    )  # fmt: skip
    seen: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller(n: int) -> None:
        while not stop.is_set():
            response = await client.post(
                "/recommend", json={"project": "search-a", "query": f"saw {n}", "k": 3}, headers=key
            )
            if response.status_code != 200:
                failures.append(response.text)
            else:
                seen.append(response.json()["model_version"])

    callers = [asyncio.create_task(caller(n)) for n in range(8)]
    await asyncio.sleep(0.5)
    promoted = await world.call("owner", "POST", f"/api/v1/model-versions/{second}/promote")
    assert promoted.status_code == 200
    for _ in range(300):
        if seen and seen[-1] == second:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*callers)
    assert failures == []
    assert seen[0] == deployed["bi"] and seen[-1] == second
    first_new = seen.index(second)
    assert set(seen[first_new + 8 :]) <= {second}  # once swapped, every new request gets the new version


async def test_a_canary_serves_its_share_by_user(
    world: World,
    settings: Settings,
    deployed: dict[str, Any],
    inference_client: httpx.AsyncClient,
    tiny_model: Path,
) -> None:
    relevance = (await world.call("member", "GET", f"/api/v1/model-versions/{deployed['bi']}")).json()[
        "dataset_version_id"
    ]
    (second,) = await _train(
        world,
        settings,
        [{"job_type": "bi_encoder", "dataset_version_id": relevance, "base_model": str(tiny_model),
          "hyperparameters": {"max_steps": 5, "batch_size": 16, "max_length": 32, "seed": 3}}],
    )  # fmt: skip
    canary = await world.call(
        "owner", "POST", f"/api/v1/model-versions/{second}/promote", json={"canary_percent": 30}
    )
    assert canary.status_code == 200
    await _wait_loaded(inference_client)
    key = bearer(world.keys["service"])
    served: dict[str, str] = {}
    for user in range(200):
        response = await inference_client.post(
            "/recommend", json={"project": "search-a", "query": "fan", "user_id": f"u{user}"}, headers=key
        )
        served[f"u{user}"] = response.json()["model_version"]
    share = sum(v == second for v in served.values()) / len(served)
    assert 0.18 < share < 0.42, share
    again = await inference_client.post(
        "/recommend", json={"project": "search-a", "query": "fan", "user_id": "u5"}, headers=key
    )
    assert again.json()["model_version"] == served["u5"]  # a user stays on their side


def test_the_service_never_imports_torch(settings: Settings) -> None:
    code = (
        "import sys\n"
        "from services.inference.app import create_app\n"
        "from services.inference import service, registry, catalog, batching\n"
        "create_app()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    env = {
        "RECFORGE_DATABASE_URL": settings.resolved_database_url(),
        "RECFORGE_REDIS_URL": settings.resolved_redis_url(),
    }
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


async def _recommend_ids(
    client: httpx.AsyncClient, key: dict[str, str], query: str, k: int = 10
) -> list[str]:
    response = await client.post(
        "/recommend", json={"project": "search-a", "query": query, "k": k}, headers=key
    )
    assert response.status_code == 200, response.text
    return [item["product_id"] for item in response.json()["items"]]


async def test_merchandising_rules_reshape_the_ranking(
    world: World, deployed: dict[str, Any], inference_client: httpx.AsyncClient
) -> None:
    client = inference_client
    await _wait_loaded(client)
    key = bearer(world.keys["service"])
    out_of_stock = {"p10", "p30", "p50", "p70"}
    before = [p for p in await _recommend_ids(client, key, "drill", k=30) if p not in out_of_stock]
    hose_before = await _recommend_ids(client, key, "hose", k=200)
    rules = [
        {"action": "hide", "product_id": before[0]},
        {"action": "bury", "product_id": before[1]},
        {"action": "pin", "product_id": "p55", "position": 2, "query": "Drill"},
        {"action": "hide_out_of_stock"},
    ]
    created = []
    for rule in rules:
        response = await world.call("maintainer", "POST", f"{P}/merchandising-rules", json=rule)
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    after: list[str] = []
    for _ in range(100):  # the Redis notice makes the service reload
        after = await _recommend_ids(client, key, "drill")
        if len(after) > 1 and after[1] == "p55" and not {"p10", "p30", "p50", "p70"} & set(after):
            break
        await asyncio.sleep(0.05)
    assert after[1] == "p55"
    assert before[0] not in after and before[1] not in after
    assert not {"p10", "p30", "p50", "p70"} & set(after)  # out of stock
    everything = await _recommend_ids(client, key, "drill", k=200)
    assert everything[-1] == before[1]  # buried: after every other product
    hidden = {before[0]} | out_of_stock
    hose = [p for p in hose_before if p not in hidden and p != before[1]]
    hose += [before[1]] if before[1] in hose_before else []
    assert await _recommend_ids(client, key, "hose", k=200) == hose  # the pin is for "drill" only
    deleted = await world.call("maintainer", "DELETE", f"/api/v1/merchandising-rules/{created[2]}")
    assert deleted.status_code == 204
    for _ in range(100):
        after = await _recommend_ids(client, key, "drill")
        if after[1] != "p55":
            break
        await asyncio.sleep(0.05)
    assert after[1] != "p55"
    listed = (await world.call("viewer", "GET", f"{P}/merchandising-rules")).json()
    assert [r["action"] for r in listed] == ["hide", "bury", "hide_out_of_stock"]


async def test_events_need_no_deployment(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = {"project": "search-a", "events": [{"type": "click", "product_id": "p1", "user_id": "u9"}]}
    stored = await inference_client.post("/events", json=body, headers=bearer(world.keys["service"]))
    assert stored.status_code == 202, stored.text
    other = await inference_client.post(
        "/events", json={**body, "project": "search-b"}, headers=bearer(world.keys["service"])
    )
    assert other.status_code == 404  # another project answers as one that does not exist
    missing = await inference_client.post(
        "/events", json={**body, "project": "nope"}, headers=bearer(world.keys["service"])
    )
    assert missing.status_code == 404
    async with sessionmaker() as session:
        rows = (await session.execute(select(Event))).scalars().all()
    assert [(r.event_type, r.product_id, r.user_id) for r in rows] == [("click", "p1", "u9")]


async def test_an_events_type_is_named_event_as_in_the_interactions_dataset_and_type_is_taken_too(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    events = [{"event": "cart", "product_id": "p1"}, {"type": "purchase", "product_id": "p2"}]
    stored = await inference_client.post(
        "/events", json={"project": "search-a", "events": events}, headers=bearer(world.keys["service"])
    )
    assert stored.status_code == 202, stored.text
    both = await inference_client.post(
        "/events",
        json={"project": "search-a", "events": [{"event": "cart", "type": "click", "product_id": "p1"}]},
        headers=bearer(world.keys["service"]),
    )
    assert both.status_code == 422  # one of the two names, never both
    async with sessionmaker() as session:
        rows = (await session.execute(select(Event).order_by(Event.product_id))).scalars().all()
    assert [(r.event_type, r.product_id) for r in rows] == [("cart", "p1"), ("purchase", "p2")]


async def test_an_event_sent_again_under_its_id_is_stored_once_and_its_own_time_is_kept(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    skewed = "2026-11-02T09:00:00+05:00"  # a caller's clock hours off: stored as sent, moves no metric
    events = [
        {"event": "click", "product_id": "p1", "request_id": "r1", "event_id": "e-1", "occurred_at": skewed},
        {"event": "click", "product_id": "p1", "request_id": "r1", "event_id": "e-1"},  # a retry in the batch
        {"event": "cart", "product_id": "p1", "request_id": "r1"},
    ]
    key = bearer(world.keys["service"])
    first = await inference_client.post(
        "/events", json={"project": "search-a", "events": events}, headers=key
    )
    assert first.status_code == 202 and first.json() == {"accepted": 2, "duplicates": 1}
    again = await inference_client.post(
        "/events", json={"project": "search-a", "events": events[:1]}, headers=key
    )
    assert again.json() == {"accepted": 0, "duplicates": 1}
    naive = {**events[0], "event_id": "e-2", "occurred_at": "2026-11-02T09:00:00"}
    refused = await inference_client.post(
        "/events", json={"project": "search-a", "events": [naive]}, headers=key
    )
    assert refused.status_code == 422  # a time without its zone could be any time
    async with sessionmaker() as session:
        rows = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
    assert [(r.event_type, r.event_id) for r in rows] == [("click", "e-1"), ("cart", None)]
    assert rows[0].occurred_at.isoformat() == "2026-11-02T04:00:00+00:00"


class _ThreadRecordingTokenizer:
    """The real tokenizer, noting which thread each encode ran on."""

    calls: ClassVar[list[int]] = []

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @classmethod
    def from_file(cls, path: str) -> _ThreadRecordingTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path))

    def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(threading.get_ident())
        return self._inner.encode_batch(*args, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(threading.get_ident())
        return self._inner.encode(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def recording_tokenizers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    _ThreadRecordingTokenizer.calls = []
    monkeypatch.setattr("shared.onnxmodel.Tokenizer", _ThreadRecordingTokenizer)
    return _ThreadRecordingTokenizer.calls


async def test_embeddings_tokenize_off_the_event_loop(
    world: World,
    deployed: dict[str, Any],
    recording_tokenizers: list[int],
    inference_client: httpx.AsyncClient,
) -> None:
    """2,048 texts are tokenized (for the model and for the usage count) in worker threads: the event
    loop keeps answering other requests meanwhile."""
    await _wait_loaded(inference_client)
    loop_thread = threading.get_ident()
    recording_tokenizers.clear()
    texts = [f"cordless drill with battery pack number {i}" for i in range(2048)]
    answer = await inference_client.post(
        "/v1/embeddings", json={"model": "search-a", "input": texts}, headers=await _service_key(world)
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2048 and answer.json()["usage"]["total_tokens"] > 2048
    assert recording_tokenizers and loop_thread not in recording_tokenizers


async def test_a_graph_that_does_not_match_its_digest_is_not_served(
    world: World, settings: Settings, deployed: dict[str, Any]
) -> None:
    from asgi_lifespan import LifespanManager

    from services.inference.app import create_app

    version = (await world.call("member", "GET", f"/api/v1/model-versions/{deployed['bi']}")).json()
    graph = settings.data_dir / version["artifacts"]["model_int8"]["path"]
    fp32 = settings.data_dir / version["artifacts"]["model"]["path"]
    graph.write_bytes(fp32.read_bytes())  # a valid graph, but not the one the registry describes
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
            await _wait_loaded(client)
            rows = (await client.get("/models", headers=bearer(world.admin))).json()
            failed = [r for r in rows if r["model_version_id"] == deployed["bi"]]
            assert failed and failed[0]["state"] == "failed" and "sha256" in failed[0]["error"]
            answer = await client.post(
                "/recommend",
                json={"project": "search-a", "query": "drill"},
                headers=await _service_key(world),
            )
            assert answer.status_code == 503 and deployed["bi"] in answer.json()["message"]
            classified = await client.post(
                "/classify",
                json={"project": "search-a", "texts": ["where is my order"]},
                headers=await _service_key(world),
            )
            assert classified.status_code == 200  # the project's other roles are served


async def test_request_ids_are_each_projects_own(
    world: World,
    deployed: dict[str, Any],
    inference_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A request id is the client's choice: another project sending events with the same id does not
    see (or take) the version that answered search-a's request."""
    await _wait_loaded(inference_client)
    answered = await inference_client.post(
        "/recommend",
        json={"project": "search-a", "query": "drill"},
        headers={**(await _service_key(world)), "X-Request-ID": "checkout-42"},
    )
    assert answered.status_code == 200 and answered.json()["request_id"] == "checkout-42"
    await asyncio.sleep(0.2)  # the link is written beside the response
    event = {"type": "click", "product_id": "p1", "request_id": "checkout-42"}
    for project in ("search-b", "search-a"):
        sent = await inference_client.post(
            "/events", json={"project": project, "events": [event]}, headers=bearer(world.admin)
        )
        assert sent.status_code == 202, sent.text
    async with sessionmaker() as session:
        rows = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
    assert [str(r.model_version_id) if r.model_version_id else None for r in rows] == [None, deployed["bi"]]


async def test_a_retired_versions_metrics_leave_with_it(
    world: World,
    settings: Settings,
    deployed: dict[str, Any],
    inference_client: httpx.AsyncClient,
    tiny_model: Path,
) -> None:
    await _wait_loaded(inference_client)
    key = bearer(world.keys["service"])
    first = deployed["bi"]
    served = await inference_client.post(
        "/recommend", json={"project": "search-a", "query": "saw"}, headers=key
    )
    assert served.json()["model_version"] == first
    scraped = (await inference_client.get("/metrics", headers=bearer(world.admin))).text
    assert f'model_version="{first}"' in scraped
    relevance = (await world.call("member", "GET", f"/api/v1/model-versions/{first}")).json()[
        "dataset_version_id"
    ]
    (second,) = await _train(
        world,
        settings,
        [{"job_type": "bi_encoder", "dataset_version_id": relevance, "base_model": str(tiny_model),
          "hyperparameters": {"max_steps": 3, "batch_size": 16, "max_length": 32, "seed": 3}}],
    )  # fmt: skip
    assert (await world.call("owner", "POST", f"/api/v1/model-versions/{second}/promote")).status_code == 200
    for _ in range(300):
        answer = await inference_client.post(
            "/recommend", json={"project": "search-a", "query": "saw"}, headers=key
        )
        if answer.json()["model_version"] == second:
            break
        await asyncio.sleep(0.1)
    scraped = (await inference_client.get("/metrics", headers=bearer(world.admin))).text
    assert f'model_version="{second}"' in scraped
    assert first not in scraped  # neither its latency series nor its batcher's
