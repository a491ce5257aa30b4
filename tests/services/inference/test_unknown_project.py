"""Which project a request names: an unknown one is called unknown, the caller's own project with nothing
deployed says how to deploy, another project's key learns nothing, and slugs match case alike in the
API and in inference."""

from __future__ import annotations

import httpx

from tests.support.world import World, bearer

UNKNOWN = "project 'no-such-shop' not found: no project has that slug or id"


async def _recommend(inference_client: httpx.AsyncClient, key: str, project: str) -> httpx.Response:
    return await inference_client.post(
        "/recommend", json={"project": project, "query": "drill"}, headers=bearer(key)
    )


async def test_an_unknown_project_is_named_unknown(world: World, inference_client: httpx.AsyncClient) -> None:
    for key in (world.admin, world.keys["service"]):
        answer = await _recommend(inference_client, key, "no-such-shop")
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"
        assert answer.json()["message"] == UNKNOWN


async def test_the_callers_own_project_with_nothing_deployed_says_how_to_deploy(
    world: World, inference_client: httpx.AsyncClient
) -> None:
    answer = await _recommend(inference_client, world.keys["service"], "search-a")
    assert answer.status_code == 404
    assert answer.json()["message"] == (
        "project 'search-a' has no deployed model versions: promote one "
        "(recforge models list, then recforge models promote VERSION_ID)"
    )


async def test_another_projects_key_gets_the_unknown_project_answer(
    world: World, inference_client: httpx.AsyncClient
) -> None:
    answer = await _recommend(inference_client, world.keys["service"], "search-b")
    assert answer.status_code == 404
    assert answer.json()["message"] == "project 'search-b' not found: no project has that slug or id"
    events = await inference_client.post(
        "/events",
        json={"project": "search-b", "events": [{"type": "click", "product_id": "p1"}]},
        headers=bearer(world.keys["service"]),
    )
    assert events.status_code == 404
    assert events.json()["message"] == "project 'search-b' not found: no project has that slug or id"


async def test_slugs_match_case_alike_in_the_api_and_in_inference(
    world: World, inference_client: httpx.AsyncClient
) -> None:
    api = await world.call("owner", "GET", "/api/v1/projects/Search-A")
    assert api.status_code == 200 and api.json()["slug"] == "search-a"
    answer = await _recommend(inference_client, world.keys["service"], "SEARCH-A")
    assert answer.status_code == 404
    assert "project 'SEARCH-A' has no deployed model versions" in answer.json()["message"]
