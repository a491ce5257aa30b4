"""What a request may cost the inference service before it is refused: no body is read for a caller
without a valid key, bodies over RECFORGE_MAX_BODY_KB answer 413, and texts and lists over their limits
answer 422 naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support.world import World, bearer


def _endless(first: bytes) -> Any:
    async def chunks() -> Any:
        yield first
        await asyncio.Event().wait()  # the rest never comes
        yield b""

    return chunks()


async def test_no_body_is_read_without_a_valid_key(inference_client: httpx.AsyncClient, db: object) -> None:
    for headers in ({}, bearer("rf_not-a-key")):
        answer = await asyncio.wait_for(
            inference_client.post(
                "/recommend",
                content=_endless(b'{"project": "p", "query": "' + b"x" * 65536),
                headers={**headers, "Content-Type": "application/json"},
            ),
            timeout=10,
        )
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_bodies_over_the_limit_answer_413(world: World, inference_client: httpx.AsyncClient) -> None:
    big = b'{"project": "search-a", "query": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    declared = await inference_client.post(
        "/recommend", content=big, headers={**bearer(world.admin), "Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and declared.json()["detail"]["limit_bytes"] == 1024 * 1024

    async def streamed() -> Any:  # no Content-Length: refused once the bytes pass the limit
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    refused = await inference_client.post(
        "/recommend", content=streamed(), headers={**bearer(world.admin), "Content-Type": "application/json"}
    )
    assert refused.status_code == 413


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/rerank", {"query": "drill", "documents": ["a drill", "x" * 8193]}, ["body", "documents", 1]),
        ("/score", {"query": "drill", "documents": ["y" * 8193]}, ["body", "documents", 0]),
        ("/score", {"query": "drill", "product_ids": ["p" * 201]}, ["body", "product_ids", 0]),
        ("/classify", {"texts": ["ok", "z" * 8193]}, ["body", "texts", 1]),
        ("/recommend", {"history": ["h" * 201]}, ["body", "history", 0]),
        ("/v1/embeddings", {"input": ["a"] * 2049}, ["body", "input"]),
        ("/v1/embeddings", {"input": "w" * 8193}, ["body", "input"]),
        ("/v1/embeddings", {"input": ["fine", ""]}, ["body", "input"]),
        ("/rerank", {"query": "drill", "documents": ["d"] * 1001}, ["body", "documents"]),
        (
            "/events",
            {
                "events": [
                    {"type": "click", "product_id": "p1", "properties": {f"k{i}": i for i in range(33)}}
                ]
            },
            ["body", "events", 0, "properties"],
        ),
        (
            "/events",
            {"events": [{"type": "click", "product_id": "p1", "properties": {"note": "n" * 1001}}]},
            ["body", "events", 0, "properties"],
        ),
    ],
)
async def test_texts_and_lists_over_their_limits_answer_422_naming_the_field(
    world: World, inference_client: httpx.AsyncClient, path: str, body: dict[str, Any], field: list[Any]
) -> None:
    key = "model" if path == "/v1/embeddings" else "project"
    answer = await inference_client.post(path, json={key: "search-a", **body}, headers=bearer(world.admin))
    assert answer.status_code == 422, answer.text
    if path.startswith("/v1/"):  # OpenAI's shape: the field is the error's param
        assert answer.json()["error"]["param"] == field[1], answer.text
        return
    locations = [item["loc"] for item in answer.json()["detail"]]
    assert any(loc[: len(field)] == field for loc in locations), locations


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", '{"project": "search-a", "query": "drill\\u0000"}', ["body", "query"]),
        ("/v1/embeddings", '{"model": "search-a", "input": ["ok", "\\ud800"]}', ["body", "input", 1]),
        ("/events", '{"project": "search-a", "events": [{"type": "click", "product_id": "p\\u0000"}]}',
         ["body", "events", 0, "product_id"]),
        ("/events", '{"project": "search-a", "events": [{"type": "click", "product_id": "p", "position": 2.5e11}]}',
         ["body", "events", 0, "position"]),
        ("/events", '{"project": "search-a", "events": [{"type": "cart", "product_id": "p", "value": NaN}]}',
         ["body"]),
        ("/events", '{"project": "search-a", "events": [{"type": "cart", "product_id": "p", "properties": {"n": 1e400}}]}',
         ["body", "events", 0, "properties", "n"]),
        ("/events", '{"project": "search-a", "events": [{"type": "cart", "product_id": "p", "properties": {"n": 99999999999999999999}}]}',
         ["body", "events", 0, "properties"]),
    ],
)  # fmt: skip
async def test_text_no_model_or_database_can_take_answers_422_naming_the_field(
    world: World, inference_client: httpx.AsyncClient, path: str, body: str, field: list[Any]
) -> None:
    answer = await inference_client.post(
        path, content=body.encode(), headers={**bearer(world.admin), "Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    if path.startswith("/v1/"):  # OpenAI's shape: the field is the error's param, the place in the message
        error = answer.json()["error"]
        assert error["param"] == field[1] and ".".join(map(str, field[1:])) in error["message"], answer.text
        return
    assert answer.json()["detail"][0]["loc"] == field
