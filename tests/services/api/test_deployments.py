"""Promotion of model versions into a project's deployment roles, canaries and the Redis notice."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.jobs import DEPLOYMENTS_CHANNEL
from tests.factories import add_version
from tests.support.world import World

P = "/api/v1/projects/search-a"


async def _status(w: World, version_id: str) -> str:
    return str((await w.call("member", "GET", f"/api/v1/model-versions/{version_id}")).json()["status"])


async def test_promote_canary_and_replace(
    world: World, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    project = world.projects["search-a"]["id"]
    v1 = await add_version(sessionmaker, project, number=1)
    v2 = await add_version(sessionmaker, project, number=2)
    redis = Redis.from_url(settings.resolved_redis_url())
    pubsub = redis.pubsub()
    await pubsub.subscribe(DEPLOYMENTS_CHANNEL)
    try:
        canary_first = await world.call(
            "owner", "POST", f"/api/v1/model-versions/{v1}/promote", json={"canary_percent": 10}
        )
        assert canary_first.status_code == 409 and "no retriever deployed" in canary_first.text

        first = await world.call("maintainer", "POST", f"/api/v1/model-versions/{v1}/promote")
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["role"] == "retriever" and body["model_version_id"] == v1 and body["canary_percent"] == 0
        assert await _status(world, v1) == "production"
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        assert message is not None
        assert json.loads(message["data"]) == {
            "project_id": project,
            "role": "retriever",
            "deployment_id": body["id"],
        }

        canary = await world.call(
            "owner", "POST", f"/api/v1/model-versions/{v2}/promote", json={"canary_percent": 20}
        )
        assert canary.status_code == 200, canary.text
        assert canary.json()["model_version_id"] == v1 and canary.json()["canary_model_version_id"] == v2
        assert canary.json()["canary_percent"] == 20 and await _status(world, v2) == "staging"

        full = await world.call("owner", "POST", f"/api/v1/model-versions/{v2}/promote")
        assert full.json()["model_version_id"] == v2 and full.json()["canary_model_version_id"] is None
        assert await _status(world, v2) == "production" and await _status(world, v1) == "retired"
        again = await world.call("owner", "POST", f"/api/v1/model-versions/{v2}/promote")
        assert again.json()["id"] == full.json()["id"]  # nothing changes

        active = (await world.call("viewer", "GET", f"{P}/deployments")).json()
        assert [d["id"] for d in active] == [full.json()["id"]]
        history = (await world.call("viewer", "GET", f"{P}/deployments?history=true")).json()
        assert [d["is_active"] for d in history] == [True, False, False]
        audit = (await world.call("owner", "GET", f"{P}/audit")).json()["items"]
        assert sum(1 for row in audit if row["action"] == "model_version.promote") == 3
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


async def test_roles_are_filled_by_task_type(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project = world.projects["search-a"]["id"]
    roles = (("cross_encoder", "reranker"), ("classifier", "classifier"), ("bi_encoder", "retriever"))
    for number, (task, role) in enumerate(roles, start=1):
        version = await add_version(sessionmaker, project, task, number=number)
        promoted = await world.call("owner", "POST", f"/api/v1/model-versions/{version}/promote")
        assert promoted.status_code == 200 and promoted.json()["role"] == role
    assert len((await world.call("member", "GET", f"{P}/deployments")).json()) == 3


@pytest.mark.parametrize(
    ("who", "body", "code"),
    [
        ("member", None, 403),
        ("viewer", None, 403),
        ("outsider", None, 404),
        ("owner_b", None, 404),
        ("service", None, 403),
        ("owner", {"canary_percent": 100}, 422),
        ("owner", {"canary_percent": 0}, 422),
        ("owner", {"traffic": 5}, 422),
    ],
)
async def test_refused_promotions_change_nothing(
    world: World, sessionmaker: async_sessionmaker[AsyncSession], who: str, body: Any, code: int
) -> None:
    version = await add_version(sessionmaker, world.projects["search-a"]["id"])
    response = await world.call(who, "POST", f"/api/v1/model-versions/{version}/promote", json=body)
    assert response.status_code == code, response.text
    assert (await world.call("owner", "GET", f"{P}/deployments")).json() == []
    assert await _status(world, version) == "candidate"


async def test_a_version_without_graph_or_unknown_is_refused(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    empty = await add_version(sessionmaker, world.projects["search-a"]["id"], artifacts={})
    response = await world.call("owner", "POST", f"/api/v1/model-versions/{empty}/promote")
    assert response.status_code == 409 and "no ONNX graph" in response.text
    missing = await world.call("owner", "POST", f"/api/v1/model-versions/{uuid.uuid4()}/promote")
    assert missing.status_code == 404


async def test_concurrent_promotions_leave_one_active_row(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project = world.projects["search-a"]["id"]
    versions = [await add_version(sessionmaker, project, number=n) for n in range(1, 5)]
    responses = await asyncio.gather(
        *(world.call("owner", "POST", f"/api/v1/model-versions/{v}/promote") for v in versions)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    active = (await world.call("owner", "GET", f"{P}/deployments")).json()
    assert len(active) == 1
    statuses = [await _status(world, v) for v in versions]
    assert statuses.count("production") == 1 and statuses.count("retired") == 3


@pytest.mark.parametrize(
    "body",
    [
        {"action": "pin", "product_id": "p1"},
        {"action": "pin", "position": 1},
        {"action": "boost", "product_id": "p1"},
        {"action": "boost", "product_id": "p1", "category": "Tools", "weight": 2},
        {"action": "hide"},
        {"action": "bury", "product_id": "p1", "weight": 2},
        {"action": "hide_out_of_stock", "product_id": "p1"},
        {"action": "promote", "product_id": "p1"},
        {"action": "boost", "category": "Tools", "weight": 0},
    ],
)
async def test_invalid_rules_are_refused(world: World, body: dict[str, Any]) -> None:
    response = await world.call("owner", "POST", f"{P}/merchandising-rules", json=body)
    assert response.status_code == 422, response.text
    assert (await world.call("owner", "GET", f"{P}/merchandising-rules")).json() == []


async def test_rules_belong_to_owners_and_maintainers(world: World) -> None:
    rule = {"action": "boost", "category": "Tools > Saws", "weight": 1.5, "query": "  Saw "}
    assert (await world.call("member", "POST", f"{P}/merchandising-rules", json=rule)).status_code == 403
    assert (await world.call("owner_b", "POST", f"{P}/merchandising-rules", json=rule)).status_code == 404
    created = await world.call("maintainer", "POST", f"{P}/merchandising-rules", json=rule)
    assert created.status_code == 201 and created.json()["query"] == "saw"
    rule_id = created.json()["id"]
    assert (await world.call("member", "DELETE", f"/api/v1/merchandising-rules/{rule_id}")).status_code == 403
    assert (
        await world.call("owner_b", "DELETE", f"/api/v1/merchandising-rules/{rule_id}")
    ).status_code == 404
    assert (await world.call("owner", "DELETE", f"/api/v1/merchandising-rules/{rule_id}")).status_code == 204
    assert (await world.call("owner", "DELETE", f"/api/v1/merchandising-rules/{rule_id}")).status_code == 404
    audit = (await world.call("owner", "GET", f"{P}/audit")).json()["items"]
    assert {"merchandising_rule.create", "merchandising_rule.delete"} <= {row["action"] for row in audit}
