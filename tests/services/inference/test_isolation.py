"""One tenant's broken version fails that tenant's requests only: the replica stays ready and serves
every other project; admins see which version failed and why, anyone else sees no error text."""

from __future__ import annotations

import asyncio
import json

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.factories import add_version
from tests.support.world import World, bearer


async def test_a_version_that_cannot_load_fails_its_own_project_only(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    b = world.projects["search-b"]
    broken = await add_version(sessionmaker, b["id"], artifacts={"model": {"path": "no-such-graph.onnx"}})
    promoted = await world.call("owner_b", "POST", f"/api/v1/model-versions/{broken}/promote")
    assert promoted.status_code == 200, promoted.text

    async def listed() -> list[dict[str, object]]:
        return list((await inference_client.get("/models", headers=bearer(world.admin))).json())

    for _ in range(100):  # the promotion's notice makes the replica try to load it
        rows = await listed()
        if rows:
            break
        await asyncio.sleep(0.1)
    assert [(r["project"], r["model_version_id"], r["state"]) for r in rows] == [
        ("search-b", broken, "failed")
    ]
    assert "no-such-graph.onnx" in str(rows[0]["error"])

    ready = await inference_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["models"]["detail"] == {"loaded": 0, "failed": 1}
    assert broken not in ready.text and "no-such-graph" not in ready.text

    answer = await inference_client.post(
        "/recommend", json={"project": "search-b", "query": "drill"}, headers=bearer(world.admin)
    )
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert broken in answer.json()["message"]
    other = await inference_client.post(
        "/recommend", json={"project": "search-a", "query": "drill"}, headers=bearer(world.keys["service"])
    )
    assert other.status_code == 404  # search-a has nothing deployed: its own, unrelated answer
    assert "search-b" not in json.dumps(other.json())

    assert (await inference_client.get("/models")).status_code == 401
    assert (await inference_client.get("/models", headers=bearer(world.keys["service"]))).status_code == 403
