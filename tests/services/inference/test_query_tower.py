"""Query-tower-only LoRA bi-encoders: the trainer ships the base model's graphs as the product side, and
promoting one version after another serves the catalog index already loaded, embedding nothing again."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.config import Settings
from shared.onnxmodel import OnnxTextModel
from tests.services.inference.test_serving import catalog_csv, judgments_csv
from tests.support.training import PROJECT as P
from tests.support.training import train, upload
from tests.support.world import World, bearer

TOWER = {"adapter": "lora", "query_tower_only": True, "lora_r": 4, "batch_size": 16, "max_length": 32,
         "learning_rate": 1e-2}  # fmt: skip


def _graph(settings: Settings, version: dict[str, Any], name: str) -> OnnxTextModel:
    folder = (settings.data_dir / version["artifacts"]["model"]["path"]).parent  # the tokenizer's
    path = settings.data_dir / version["artifacts"][name]["path"]
    return OnnxTextModel(path, folder, max_length=version["config"]["max_length"])


def _catalog_indexes(scraped: str) -> dict[str, float]:
    found = re.findall(r'recforge_inference_catalog_indexes_total\{source="(\w+)"\} ([0-9.]+)', scraped)
    return {source: float(count) for source, count in found}


async def _serving(client: httpx.AsyncClient, key: dict[str, str], version: str) -> dict[str, Any]:
    for _ in range(600):
        answer = await client.post(
            "/recommend", json={"project": "search-a", "query": "saw", "k": 5}, headers=key
        )
        if answer.status_code == 200 and answer.json()["model_version"] == version:
            return dict(answer.json())
        await asyncio.sleep(0.1)
    raise AssertionError(f"version {version} never served: {answer.text}")


async def test_a_query_tower_only_version_goes_live_on_the_loaded_catalog_index(
    world: World, settings: Settings, tiny_model: Path, inference_client: httpx.AsyncClient
) -> None:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    await upload(world, "catalog.csv", catalog_csv(), "catalog")
    relevance = await upload(world, "judgments.csv", judgments_csv(), "relevance")
    bodies = [
        {"job_type": "bi_encoder", "dataset_version_id": relevance, "base_model": str(tiny_model),
         "hyperparameters": {**TOWER, "max_steps": steps, "seed": seed}}
        for steps, seed in ((20, 1), (25, 2))
    ]  # fmt: skip
    first_id, second_id = await train(world, settings, bodies)
    first, second = [
        (await world.call("member", "GET", f"/api/v1/model-versions/{v}")).json()
        for v in (first_id, second_id)
    ]
    for version in (first, second):
        assert version["config"]["query_tower_only"] is True
        assert {"product_model", "product_model_int8", "adapter"} <= set(version["artifacts"])
        assert version["artifacts"]["adapter"]["query_tower_only"] is True
        assert "catalog_ndcg@10" in version["metrics"]
    # the same base model's graphs, byte for byte: the product side of both versions is one model
    for name in ("product_model", "product_model_int8"):
        assert first["artifacts"][name]["sha256"] == second["artifacts"][name]["sha256"]
    assert first["artifacts"]["model"]["sha256"] != second["artifacts"]["model"]["sha256"]

    key = bearer(world.keys["service"])
    admin = bearer(world.admin)
    assert (
        await world.call("owner", "POST", f"/api/v1/model-versions/{first_id}/promote")
    ).status_code == 200
    await _serving(inference_client, key, first_id)
    assert _catalog_indexes((await inference_client.get("/metrics", headers=admin)).text) == {"embedded": 1.0}

    assert (
        await world.call("owner", "POST", f"/api/v1/model-versions/{second_id}/promote")
    ).status_code == 200
    await _serving(inference_client, key, second_id)
    # no index job ran, and the catalog was not embedded again: the loaded index serves the new version
    assert _catalog_indexes((await inference_client.get("/metrics", headers=admin)).text) == {
        "embedded": 1.0,
        "shared": 1.0,
    }
    jobs = (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]
    assert {job["job_type"] for job in jobs} == {"bi_encoder"}

    # dense scores are the new query graph's embedding against the base model's product embeddings
    dense = await inference_client.post(
        "/recommend",
        json={"project": "search-a", "query": "saw", "k": 5, "retrieval": "dense"},
        headers=key,
    )
    assert dense.status_code == 200, dense.text
    served = "model_int8" if second["artifacts"]["model_int8"]["servable"] else "model"
    query = _graph(settings, second, served).embed(["saw"])[0]
    rows = [line.split(",") for line in catalog_csv().splitlines()[1:]]
    texts = {row[0]: f"{row[2]} {row[1]}" for row in rows}  # the brand leads a title that lacks it
    ids = list(texts)
    for side, expected_match in ((f"product_{served}", True), (served, False)):
        vectors = _graph(settings, second, side).embed([texts[p] for p in ids])
        scores = vectors @ query
        top = [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        got = [item["product_id"] for item in dense.json()["items"]]
        wanted = {ids[i]: float(scores[i]) for i in range(len(ids))}
        close = all(abs(item["score"] - wanted[item["product_id"]]) < 1e-4 for item in dense.json()["items"])
        assert (close and got == top) is expected_match, side


@pytest.mark.parametrize("job_type", ["cross_encoder", "classifier"])
async def test_query_tower_only_is_refused_where_there_is_one_tower(world: World, job_type: str) -> None:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    refused = await world.call(
        "member",
        "POST",
        f"{P}/training-jobs",
        json={"job_type": job_type, "dataset_version_id": "00000000-0000-0000-0000-000000000000",
              "hyperparameters": {"adapter": "lora", "query_tower_only": True}},
    )  # fmt: skip
    assert refused.status_code == 422 and "query_tower_only applies to bi_encoder" in refused.text
