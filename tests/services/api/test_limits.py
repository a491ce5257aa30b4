"""Request bodies of the api: JSON over RECFORGE_MAX_BODY_KB answers 413 unread; dataset uploads stream
under their own, larger limit."""

from __future__ import annotations

import io
import json

from tests.support.data import CATALOG_CSV
from tests.support.world import World


async def test_json_bodies_over_the_limit_answer_413(world: World) -> None:
    body = json.dumps({"slug": "big", "name": "big", "description": "d" * (1024 * 1024)})
    headers = {**world.as_("owner"), "Content-Type": "application/json"}
    response = await world.client.post("/api/v1/projects", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert (await world.call("owner", "GET", "/api/v1/projects/big")).status_code == 404


async def test_dataset_uploads_are_not_held_to_the_json_limit(world: World) -> None:
    rows = "".join(f"q{i},Product number {i} with a long enough title,,,,1,yes,\n" for i in range(30_000))
    big = CATALOG_CSV + rows
    assert len(big) > 1024 * 1024
    response = await world.call(
        "member",
        "POST",
        "/api/v1/projects/search-a/datasets",
        files=[("file", ("catalog.csv", io.BytesIO(big.encode())))],
        data={"kind": "catalog"},
    )
    assert response.status_code == 201, response.text


async def test_crafted_cursors_answer_422(world: World) -> None:
    import base64

    def cursor(values: list[object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")

    a = world.projects["search-a"]["id"]
    datasets = (await world.call("member", "GET", f"/api/v1/projects/{a}/datasets")).json()
    assert datasets["items"] == []
    for url, value in (
        (f"/api/v1/projects/{a}/audit", [10**30]),
        (f"/api/v1/projects/{a}/audit", [-1]),
        (f"/api/v1/projects/{a}/model-versions", [2**63]),
        (f"/api/v1/projects/{a}/tasks", ["9999-99-99", "x"]),
        ("/api/v1/users", ["not-a-uuid"]),
    ):
        response = await world.call(
            "owner" if "users" not in url else "admin", "GET", f"{url}?cursor={cursor(value)}"
        )
        assert response.status_code == 422, (url, value, response.text)


async def test_text_that_cannot_be_stored_answers_422_naming_the_field(world: World) -> None:
    for name, where in (
        (r"a\u0000b", ["body", "name"]),  # NUL: PostgreSQL cannot store it
        (r"a\ud800b", ["body", "name"]),  # a lone surrogate: no character at all
        (r"\udc00", ["body", "name"]),
    ):
        body = '{"name": "' + name + '", "email": "someone@example.com"}'
        response = await world.client.post(
            "/api/v1/users",
            content=body.encode(),
            headers={**world.as_("admin"), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == where
    nested = '{"title": "t", "description": "ok", "labels": ["fine", "bad\\u0000"]}'
    response = await world.client.post(
        "/api/v1/projects/search-a/tasks",
        content=nested.encode(),
        headers={**world.as_("owner"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", "labels"]
    users = (await world.call("admin", "GET", "/api/v1/users")).json()["items"]
    assert not any(u["email"] == "someone@example.com" for u in users)  # nothing was written


async def test_paired_surrogates_and_escaped_backslashes_are_text(world: World) -> None:
    for n, name in enumerate((r"smile \ud83d\ude00", r"a backslash then u0000: \\u0000")):
        body = '{"name": "' + name + f'", "email": "text{n}@example.com"}}'
        response = await world.client.post(
            "/api/v1/users",
            content=body.encode(),
            headers={**world.as_("admin"), "Content-Type": "application/json"},
        )
        assert response.status_code == 201, response.text
    names = {u["name"] for u in (await world.call("admin", "GET", "/api/v1/users")).json()["items"]}
    assert {"smile \U0001f600", "a backslash then u0000: \\u0000"} <= names


async def test_nul_in_a_query_or_a_form_field_answers_422(world: World) -> None:
    response = await world.call("owner", "GET", "/api/v1/projects/search-a/tasks?status=open%00")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query"]
    response = await world.call(
        "member",
        "POST",
        "/api/v1/projects/search-a/datasets",
        files=[("file", ("catalog.csv", io.BytesIO(CATALOG_CSV.encode())))],
        data={"kind": "catalog", "name": "cat\x00alog"},
    )
    assert response.status_code == 422, response.text
    datasets = (await world.call("member", "GET", "/api/v1/projects/search-a/datasets")).json()["items"]
    assert datasets == []
