"""/v1/embeddings answers errors in OpenAI's shape, so the openai client shows RecForge's message."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.world import World


def _client(world: World, inference_client: httpx.AsyncClient, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://inference/v1", api_key=key or world.keys["service"], http_client=inference_client,
        max_retries=0,
    )  # fmt: skip


async def test_a_bad_model_name_reaches_the_openai_client_as_its_message(
    world: World, inference_client: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await _client(world, inference_client).embeddings.create(model="no-such-shop", input=["drill"])
    error = raised.value
    assert error.code == "model_not_found" and error.type == "invalid_request_error"
    message = "project 'no-such-shop' not found: no project has that slug or id"
    assert error.body["message"] == message  # type: ignore[index]
    assert message in str(error)


async def test_every_error_of_v1_has_openais_shape(world: World, inference_client: httpx.AsyncClient) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        await _client(world, inference_client, key="rf_made-up").embeddings.create(
            model="search-a", input=["x"]
        )
    assert unknown_key.value.type == "authentication_error"
    assert "this API key is not known" in unknown_key.value.body["message"]  # type: ignore[index]

    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await _client(world, inference_client).embeddings.create(model="search-a", input=["x" * 9000])
    body = invalid.value.body
    assert invalid.value.param == "input" and "8192" in body["message"]  # type: ignore[index]

    other = await inference_client.post("/recommend", json={"project": "no-such-shop", "query": "x"},
                                        headers={"Authorization": f"Bearer {world.keys['service']}"})  # fmt: skip
    assert other.status_code == 404 and other.json()["error"] == "not_found"  # the rest keep RecForge's shape
