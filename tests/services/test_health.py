"""Every service answers /healthz, /readyz against real Postgres and Redis, and /openapi.json."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from services.inference.app import create_app as create_inference
from shared.config import Settings
from tests.support.processes import free_port
from tests.support.world import bearer


async def _check_health_ready_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}

    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]

    schema = (await client.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.")
    assert "/readyz" in schema["paths"]


async def test_api_health_ready_and_openapi(api_client: httpx.AsyncClient) -> None:
    await _check_health_ready_and_openapi(api_client)


async def test_inference_health_ready_and_openapi(inference_client: httpx.AsyncClient) -> None:
    await _check_health_ready_and_openapi(inference_client)


async def test_request_id_is_echoed_or_made(api_client: httpx.AsyncClient) -> None:
    echoed = await api_client.get("/healthz", headers={"X-Request-ID": "abc123"})
    assert echoed.headers["x-request-id"] == "abc123"
    made = await api_client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32


async def test_readyz_reports_unreachable_redis(db: object, settings: Settings) -> None:
    # A real connection to a port where nothing listens: no mock.
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_inference(broken)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False


async def test_errors_render_as_json(
    api_client: httpx.AsyncClient, inference_client: httpx.AsyncClient, admin_key: str
) -> None:
    """The services' own errors and invalid requests answer {"error", "message", "detail"}."""
    unauthorized = await api_client.get("/api/v1/projects")
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "error": "unauthorized",
        "message": "no API key: send the header `Authorization: Bearer <key>` (an admin makes one with "
        "`recforge keys create` or POST /api/v1/keys)",
    }
    assert unauthorized.headers["www-authenticate"] == "Bearer"

    invalid = await api_client.get("/api/v1/projects", params={"limit": 0}, headers=bearer(admin_key))
    assert invalid.status_code == 422
    body = invalid.json()
    assert body["error"] == "validation_error" and body["message"] == "The request is invalid"
    assert [item["loc"] for item in body["detail"]] == [["query", "limit"]]

    refused = await inference_client.post("/recommend", json={"project": "p", "query": "drill"})
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized" and refused.json()["message"]


async def test_a_key_that_is_not_known_says_how_to_get_one(
    api_client: httpx.AsyncClient, inference_client: httpx.AsyncClient
) -> None:
    for client, path in ((api_client, "/api/v1/projects"), (inference_client, "/models")):
        answer = await client.get(path, headers=bearer("rf_made-up"))
        assert answer.status_code == 401
        assert answer.json()["message"] == (
            "this API key is not known: send `Authorization: Bearer <key>` with a key that exists "
            "(an admin makes one with `recforge keys create` or POST /api/v1/keys)"
        )


async def test_unknown_paths_and_methods_answer_in_the_same_shape(
    api_client: httpx.AsyncClient, inference_client: httpx.AsyncClient
) -> None:
    for client in (api_client, inference_client):
        missing = await client.get("/api/v2/projects")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "not_found",
            "message": "no such path: GET /api/v2/projects; the paths are listed at /docs",
        }
        wrong = await client.delete("/healthz")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
        assert wrong.json() == {
            "error": "method_not_allowed",
            "message": "DELETE is not allowed on /healthz; allowed: GET",
        }
