"""Project webhooks: managing hooks through the API, ``emit`` in a caller's unit of work, and signed,
retried deliveries to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from arq import create_pool
from asgi_lifespan import LifespanManager
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.app import create_app
from services.api.deps import ApiResources
from services.api.webhooks import repository
from services.api.webhooks.delivery import backoff_s, deliver_due, delivery_loop, sign, verify
from services.api.webhooks.router import router
from services.api.webhooks.schemas import SUBSCRIBABLE
from services.api.webhooks.service import MAX_HOOKS, emit
from shared.config import Settings
from shared.db import create_engine, create_sessionmaker, unit_of_work
from shared.jobs import redis_settings
from shared.models import WebhookDelivery
from shared.models.enums import WebhookEvent
from tests.support.processes import free_port
from tests.support.world import World

P = "/api/v1/projects/search-a"
SECRET = "a-secret-of-the-receiver-0123456789"


# -- the api with the webhooks router, and the resources the delivery loop uses --------------------


@pytest.fixture
async def api_client(db: AsyncEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The api (what the `world` fixture calls), with the webhooks router whether or not app.py
    mounts it yet."""
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/api/v1/webhooks/{webhook_id}" for route in app.routes):
        app.include_router(router, prefix="/api/v1")
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
async def resources(
    db: AsyncEngine, settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[ApiResources]:
    redis = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
    yield ApiResources(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        redis=redis,
        import_limiter=anyio.CapacityLimiter(1),
        event_streams=anyio.CapacityLimiter(1),
    )
    await redis.aclose()


def tuned(resources: ApiResources, **changes: Any) -> ApiResources:
    return dataclasses.replace(resources, settings=resources.settings.model_copy(update=changes))


# -- a receiver: a real HTTP server that records what it is sent ----------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0  # answer `failure` to this many requests, then `status`
    failure: int = 500
    status: int = 200
    delay_s: float = 0.0

    def answer(self, received: Received) -> int:
        self.requests.append(received)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.failure if len(self.requests) <= self.fail_first else self.status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                code = found.answer(Received(dict(self.headers.items()), body))
            self.send_response(code)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/recforge"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- helpers ----------------------------------------------------------------------------------------


async def _hook(world: World, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    created = await world.call("owner", "POST", f"{P}/webhooks", json={"url": url, "events": events, **extra})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _project(world: World, slug: str = "search-a") -> uuid.UUID:
    return uuid.UUID(world.projects[slug]["id"])


async def _emit(
    sessionmaker: async_sessionmaker[AsyncSession],
    project_id: uuid.UUID,
    event: WebhookEvent,
    data: dict[str, Any] | None = None,
) -> int:
    async with unit_of_work(sessionmaker) as session:
        return await emit(session, project_id, event, data or {"run": 1})


async def _deliveries(sessionmaker: async_sessionmaker[AsyncSession]) -> list[WebhookDelivery]:
    async with sessionmaker() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        return list((await session.execute(query)).scalars())


async def _make_due(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """What waiting out the backoff would do."""
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(WebhookDelivery).values(next_attempt_at=text("now()")))


async def _seconds_until_next_attempt(sessionmaker: async_sessionmaker[AsyncSession]) -> float:
    async with sessionmaker() as session:
        query = text("SELECT EXTRACT(EPOCH FROM next_attempt_at - now()) FROM webhook_deliveries")
        return float((await session.execute(query)).scalar_one())


# -- managing hooks ---------------------------------------------------------------------------------


async def test_the_secret_is_shown_once(world: World) -> None:
    made = await _hook(world, "https://hooks.example.com/in", ["run.started", "model.promoted"])
    assert len(made["secret"]) >= 40 and made["active"] is True and made["description"] == ""
    assert made["events"] == ["run.started", "model.promoted"]
    assert made["created_by"] == world.users["owner"]
    listed = await world.call("maintainer", "GET", f"{P}/webhooks")
    assert listed.status_code == 200
    assert [h["id"] for h in listed.json()] == [made["id"]] and "secret" not in listed.json()[0]
    one = await world.call("maintainer", "GET", f"/api/v1/webhooks/{made['id']}")
    assert one.status_code == 200 and "secret" not in one.json() and one.json()["url"] == made["url"]
    assert made["secret"] not in listed.text + one.text

    given = await _hook(world, "http://10.0.0.5:8080/x?token=1", ["job.failed"], secret=SECRET)
    assert given["secret"] == SECRET
    other = await _hook(world, "https://hooks.example.com/in", ["job.failed"])
    assert other["secret"] != made["secret"]


@pytest.mark.parametrize(
    ("body", "field_name", "says"),
    [
        ({"url": "ftp://example.com/in", "events": ["run.started"]}, "url", "http:// or https://"),
        ({"url": "example.com/in", "events": ["run.started"]}, "url", "http:// or https://"),
        ({"url": "https://", "events": ["run.started"]}, "url", "must name a host"),
        ({"url": "https:///path", "events": ["run.started"]}, "url", "must name a host"),
        ({"url": "https://example.com:99999/", "events": ["run.started"]}, "url", "not a valid URL"),
        ({"url": "https://exa mple.com/", "events": ["run.started"]}, "url", "spaces"),
        ({"url": "https://example.com/" + "a" * 2000, "events": ["run.started"]}, "url", "at most 2000"),
        ({"url": "https://example.com/", "events": []}, "events", "at least 1"),
        ({"url": "https://example.com/", "events": ["run.begun"]}, "events", "valid events: run.started"),
        ({"url": "https://example.com/", "events": ["test"]}, "events", "unknown events ['test']"),
        ({"url": "https://example.com/", "events": ["job.failed", "job.failed"]}, "events", "once"),
        ({"url": "https://example.com/"}, "events", "Field required"),
        ({"url": "https://example.com/", "events": ["job.failed"], "secret": "short"}, "secret", "16"),
        ({"url": "https://example.com/", "events": ["job.failed"], "active": False}, "active", "Extra"),
    ],
)
async def test_invalid_hooks_are_refused(
    world: World, body: dict[str, Any], field_name: str, says: str
) -> None:
    response = await world.call("owner", "POST", f"{P}/webhooks", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["loc"][:2] == ["body", field_name] and says in d["msg"] for d in detail), detail
    assert (await world.call("owner", "GET", f"{P}/webhooks")).json() == []


async def test_unknown_events_answer_the_valid_names(world: World) -> None:
    response = await world.call(
        "owner", "POST", f"{P}/webhooks", json={"url": "https://example.com/", "events": ["nope"]}
    )
    message = response.json()["detail"][0]["msg"]
    assert all(name in message for name in SUBSCRIBABLE) and "test" not in SUBSCRIBABLE


async def test_roles(world: World) -> None:
    body: dict[str, Any] = {"url": "https://example.com/", "events": ["run.started"]}
    hook = await _hook(world, body["url"], body["events"])
    for who, code in (
        ("member", 403),
        ("viewer", 403),
        ("outsider", 404),
        ("owner_b", 404),
        ("service", 403),
    ):
        assert (await world.call(who, "POST", f"{P}/webhooks", json=body)).status_code == code, who
        assert (await world.call(who, "GET", f"{P}/webhooks")).status_code == code, who
        for method, path in (
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("GET", "/deliveries"),
            ("POST", "/test"),
        ):
            kwargs = {"json": {"active": False}} if method == "PATCH" else {}
            response = await world.call(who, method, f"/api/v1/webhooks/{hook['id']}{path}", **kwargs)
            assert response.status_code == code, (who, method, path, response.text)
    assert (await world.call("maintainer", "POST", f"{P}/webhooks", json=body)).status_code == 201
    assert len((await world.call("owner", "GET", f"{P}/webhooks")).json()) == 2
    assert (await world.call("owner", "GET", f"/api/v1/webhooks/{hook['id']}")).json()["active"] is True
    missing = await world.call("owner", "GET", f"/api/v1/webhooks/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["message"] == "webhook not found"


async def test_a_project_has_at_most_twenty_hooks(world: World) -> None:
    body = {"url": "https://example.com/", "events": ["run.started"]}
    made = await asyncio.gather(*(world.call("owner", "POST", f"{P}/webhooks", json=body) for _ in range(25)))
    assert sorted(r.status_code for r in made) == [201] * MAX_HOOKS + [409] * (25 - MAX_HOOKS)
    refused = await world.call("owner", "POST", f"{P}/webhooks", json=body)
    assert refused.status_code == 409 and f"at most {MAX_HOOKS} webhooks" in refused.json()["message"]
    other = await world.call("owner_b", "POST", "/api/v1/projects/search-b/webhooks", json=body)
    assert other.status_code == 201  # the cap is per project


async def test_update_delete_and_their_audit(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    hook = await _hook(world, "https://example.com/a", ["run.started"], description="ops", secret=SECRET)
    url = f"/api/v1/webhooks/{hook['id']}"
    changed = await world.call(
        "maintainer",
        "PATCH",
        url,
        json={"url": "https://example.com/b", "events": ["job.failed", "run.finished"]},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["url"] == "https://example.com/b" and changed.json()["description"] == "ops"
    assert changed.json()["events"] == ["job.failed", "run.finished"] and "secret" not in changed.json()
    bodies: list[dict[str, Any]] = [
        {"secret": "x" * 20},
        {"url": None},
        {"events": []},
        {"url": "mailto:a@b.c"},
        {"active": "maybe"},
    ]
    for body in bodies:
        assert (await world.call("owner", "PATCH", url, json=body)).status_code == 422, body
    unchanged = await world.call("owner", "PATCH", url, json={"description": "ops"})
    assert unchanged.status_code == 200

    assert await _emit(sessionmaker, _project(world), WebhookEvent.job_failed) == 1
    assert (await world.call("owner", "DELETE", url)).status_code == 204
    assert (await world.call("owner", "GET", url)).status_code == 404
    assert (await world.call("owner", "DELETE", url)).status_code == 404
    assert await _deliveries(sessionmaker) == []  # gone with their hook

    audit = await world.call("owner", "GET", f"{P}/audit", params={"entity_type": "webhook"})
    rows = audit.json()["items"]
    assert [row["action"] for row in rows] == ["webhook.delete", "webhook.update", "webhook.create"]
    assert all(row["entity_id"] == hook["id"] for row in rows)
    delete, change, create = rows
    assert create["before"] is None and create["after"] == {
        "url": "https://example.com/a",
        "events": ["run.started"],
        "active": True,
        "description": "ops",
    }
    assert change["before"] == {"url": "https://example.com/a", "events": ["run.started"]}
    assert change["after"] == {"url": "https://example.com/b", "events": ["job.failed", "run.finished"]}
    assert change["actor_user_id"] == world.users["maintainer"]
    assert delete["after"] is None and delete["before"]["url"] == "https://example.com/b"
    assert SECRET not in audit.text and "secret" not in audit.text


# -- emit ---------------------------------------------------------------------------------------------


async def test_emit_queues_one_delivery_per_active_subscribed_hook(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    subscribed = await _hook(world, "https://example.com/a", ["run.started", "model.promoted"])
    await _hook(world, "https://example.com/b", ["job.failed"])
    off = await _hook(world, "https://example.com/c", ["run.started"])
    assert (
        await world.call("owner", "PATCH", f"/api/v1/webhooks/{off['id']}", json={"active": False})
    ).status_code == 200
    elsewhere = await world.call(
        "owner_b",
        "POST",
        "/api/v1/projects/search-b/webhooks",
        json={"url": "https://example.com/d", "events": ["run.started"]},
    )
    assert elsewhere.status_code == 201

    run_id, moment = uuid.uuid4(), dt.datetime(2026, 12, 6, 3, 0, tzinfo=dt.UTC)
    data = {"run_id": run_id, "finished_at": moment, "gate": {"ndcg": 0.71, "ids": [run_id]}}
    assert await _emit(sessionmaker, _project(world), WebhookEvent.run_started, data) == 1
    assert await _emit(sessionmaker, _project(world), WebhookEvent.budget_exhausted) == 0
    (delivery,) = await _deliveries(sessionmaker)
    assert delivery.webhook_id == uuid.UUID(subscribed["id"]) and delivery.status == "pending"
    assert delivery.event == "run.started" and delivery.attempts == 0
    payload = delivery.payload
    assert payload["id"] == str(delivery.id) and payload["event"] == "run.started"
    assert payload["project_id"] == str(_project(world))
    assert dt.datetime.fromisoformat(payload["created_at"]) == delivery.created_at
    assert payload["data"] == {
        "run_id": str(run_id),
        "finished_at": "2026-12-06T03:00:00+00:00",
        "gate": {"ndcg": 0.71, "ids": [str(run_id)]},
    }


async def test_emit_is_part_of_the_callers_unit_of_work(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _hook(world, "https://example.com/a", ["job.failed"])
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessionmaker) as session:
            assert await emit(session, _project(world), WebhookEvent.job_failed, {"job": 1}) == 1
            raise RuntimeError("the caller's change fails")
    assert await _deliveries(sessionmaker) == []


# -- delivery -----------------------------------------------------------------------------------------


async def test_a_delivery_is_signed_and_sent_once(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    hook = await _hook(world, receiver.url, ["model.promoted"], secret=SECRET)
    assert await _emit(sessionmaker, _project(world), WebhookEvent.promoted, {"version": 3}) == 1
    before = time.time()
    assert await deliver_due(resources) == 1
    assert await deliver_due(resources) == 0  # nothing left due

    (got,) = receiver.requests
    (delivery,) = await _deliveries(sessionmaker)
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "RecForge-Webhooks/1"
    assert headers["x-recforge-event"] == "model.promoted"
    assert headers["x-recforge-delivery"] == str(delivery.id)
    assert json.loads(got.body) == delivery.payload
    assert delivery.payload["data"] == {"version": 3}

    signature = headers["x-recforge-signature"]
    stamp = int(signature.split(",")[0].removeprefix("t="))
    assert before - 1 <= stamp <= time.time() + 1
    assert signature == sign(SECRET, stamp, got.body)
    assert verify(SECRET, signature, got.body)
    assert not verify(SECRET, signature, got.body.replace(b'"version":3', b'"version":4'))
    assert not verify(SECRET, signature, got.body + b" ")
    assert not verify(SECRET + "x", signature, got.body)
    assert not verify(SECRET, signature, got.body, now=stamp + 301)
    assert not verify(SECRET, signature, got.body, now=stamp - 301)
    assert verify(SECRET, signature, got.body, now=stamp + 299)
    assert verify(SECRET, signature, got.body, now=stamp + 3000, tolerance_s=3600)
    for broken in ("", "t=,v1=", f"t={stamp}", signature.split(",")[1], f"t=x,{signature.split(',')[1]}"):
        assert not verify(SECRET, broken, got.body), broken
    assert verify(SECRET, f"{signature},v1={'0' * 64}", got.body)  # a rotated key beside the current one

    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.response_status == 200 and delivery.error is None and delivery.delivered_at is not None
    listed = await world.call("owner", "GET", f"/api/v1/webhooks/{hook['id']}/deliveries")
    (row,) = listed.json()
    assert (
        row["id"] == str(delivery.id) and row["status"] == "delivered" and row["payload"] == delivery.payload
    )
    assert set(row) == {
        "id", "webhook_id", "event", "status", "attempts", "response_status", "error", "created_at",
        "next_attempt_at", "delivered_at", "payload",
    }  # fmt: skip
    assert SECRET not in listed.text


async def test_retries_back_off_then_deliver(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    receiver.fail_first = 3
    await _hook(world, receiver.url, ["job.failed"])
    await _emit(sessionmaker, _project(world), WebhookEvent.job_failed)
    base = resources.settings.webhook_backoff_s
    for attempt in (1, 2, 3):
        assert await deliver_due(resources) == 1
        (delivery,) = await _deliveries(sessionmaker)
        assert delivery.status == "pending" and delivery.attempts == attempt
        assert delivery.response_status == 500 and delivery.error == "the receiver answered HTTP 500"
        wait = await _seconds_until_next_attempt(sessionmaker)
        assert backoff_s(base, attempt) - 1 < wait <= backoff_s(base, attempt) == base * 2 ** (attempt - 1)
        assert await deliver_due(resources) == 0  # not due before its backoff
        await _make_due(sessionmaker)
    assert await deliver_due(resources) == 1
    (delivery,) = await _deliveries(sessionmaker)
    assert delivery.status == "delivered" and delivery.attempts == 4 and delivery.response_status == 200
    assert delivery.error is None and delivery.delivered_at is not None
    ids = {r.headers["X-RecForge-Delivery"] for r in receiver.requests}
    assert len(receiver.requests) == 4 and ids == {str(delivery.id)}
    assert backoff_s(5, 12) == 3600 and backoff_s(5, 1) == 5 and backoff_s(5, 4) == 40


async def test_a_delivery_fails_after_its_last_attempt(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    receiver.status = 302  # a redirect is not followed: not delivered
    hook = await _hook(world, receiver.url, ["job.failed"])
    await _emit(sessionmaker, _project(world), WebhookEvent.job_failed)
    three = tuned(resources, webhook_max_attempts=3)
    for _ in range(3):
        assert await deliver_due(three) == 1
        await _make_due(sessionmaker)
    assert await deliver_due(three) == 0
    (delivery,) = await _deliveries(sessionmaker)
    assert delivery.status == "failed" and delivery.attempts == 3 and delivery.response_status == 302
    assert len(receiver.requests) == 3
    failed = await world.call("owner", "GET", f"/api/v1/webhooks/{hook['id']}/deliveries?status=failed")
    assert [d["id"] for d in failed.json()] == [str(delivery.id)]
    pending = await world.call("owner", "GET", f"/api/v1/webhooks/{hook['id']}/deliveries?status=pending")
    assert pending.json() == []


async def test_no_answer_is_a_failed_attempt(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    await _hook(world, closed, ["job.failed"], secret=SECRET)
    slow = await _hook(world, receiver.url, ["job.failed"], secret=SECRET)
    receiver.delay_s = 2.0
    await _emit(sessionmaker, _project(world), WebhookEvent.job_failed)
    started = time.perf_counter()
    assert await deliver_due(tuned(resources, webhook_timeout_s=0.5)) == 2
    assert time.perf_counter() - started < 1.9  # sent at once, each cut at the timeout
    for delivery in await _deliveries(sessionmaker):
        assert delivery.status == "pending" and delivery.attempts == 1 and delivery.response_status is None
        assert delivery.error is not None and len(delivery.error) <= 500 and SECRET not in delivery.error
        if delivery.webhook_id == uuid.UUID(slow["id"]):
            assert delivery.error == "no answer within 0.5 s"
        else:
            assert delivery.error.startswith("ConnectError")


async def test_concurrent_senders_never_send_a_delivery_twice(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    await _hook(world, receiver.url, ["run.started"])
    for n in range(12):
        await _emit(sessionmaker, _project(world), WebhookEvent.run_started, {"n": n})
    made = await asyncio.gather(*(deliver_due(resources, limit=5) for _ in range(4)))
    assert sum(made) == 12
    ids = [r.headers["X-RecForge-Delivery"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 12
    assert {d.status for d in await _deliveries(sessionmaker)} == {"delivered"}


async def test_a_claimed_delivery_is_leased(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    """A sender that claimed a delivery and died: others wait out its lease, then send it."""
    await _hook(world, receiver.url, ["run.started"])
    await _emit(sessionmaker, _project(world), WebhookEvent.run_started)
    async with unit_of_work(sessionmaker) as session:
        (claimed,) = await repository.claim_due(session, limit=10, lease_s=40)
    assert 39 < await _seconds_until_next_attempt(sessionmaker) <= 40
    assert await deliver_due(resources) == 0 and receiver.requests == []
    await _make_due(sessionmaker)  # the lease ran out
    assert await deliver_due(resources) == 1
    async with unit_of_work(sessionmaker) as session:  # the dead sender's late write changes nothing
        assert not await repository.record_failure(
            session, claimed, response_status=None, error="late", retry_in_s=5
        )
    (delivery,) = await _deliveries(sessionmaker)
    assert delivery.status == "delivered" and delivery.attempts == 1 and len(receiver.requests) == 1


async def test_the_test_endpoint(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    hook = await _hook(world, receiver.url, ["budget.exhausted"], secret=SECRET)
    queued = await world.call("maintainer", "POST", f"/api/v1/webhooks/{hook['id']}/test")
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert body["event"] == "test" and body["status"] == "pending" and body["attempts"] == 0
    assert body["webhook_id"] == hook["id"] and body["payload"]["id"] == body["id"]
    assert body["payload"]["data"] == {"webhook_id": hook["id"], "message": "a test delivery from RecForge"}
    assert await deliver_due(resources) == 1
    (got,) = receiver.requests
    assert got.headers["X-RecForge-Event"] == "test" and json.loads(got.body) == body["payload"]
    assert verify(SECRET, got.headers["X-RecForge-Signature"], got.body)

    await world.call("owner", "PATCH", f"/api/v1/webhooks/{hook['id']}", json={"active": False})
    refused = await world.call("owner", "POST", f"/api/v1/webhooks/{hook['id']}/test")
    assert refused.status_code == 409 and "inactive" in refused.json()["message"]


async def test_deliveries_are_listed_newest_first(
    world: World, sessionmaker: async_sessionmaker[AsyncSession], resources: ApiResources
) -> None:
    hook = await _hook(world, "https://example.com/a", ["run.started"])
    for n in range(5):
        await _emit(sessionmaker, _project(world), WebhookEvent.run_started, {"n": n})
    url = f"/api/v1/webhooks/{hook['id']}/deliveries"
    listed = (await world.call("owner", "GET", url)).json()
    assert [d["payload"]["data"]["n"] for d in listed] == [4, 3, 2, 1, 0]
    two = (await world.call("owner", "GET", url, params={"limit": 2})).json()
    assert [d["payload"]["data"]["n"] for d in two] == [4, 3]
    assert (await world.call("owner", "GET", url, params={"status": "delivered"})).json() == []
    for params in ({"limit": 0}, {"limit": 201}, {"status": "sent"}):
        assert (await world.call("owner", "GET", url, params=params)).status_code == 422, params


async def test_deactivating_a_hook_stops_its_deliveries(
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
) -> None:
    hook = await _hook(world, receiver.url, ["run.finished"])
    url = f"/api/v1/webhooks/{hook['id']}"
    assert await _emit(sessionmaker, _project(world), WebhookEvent.run_finished) == 1
    off = await world.call("owner", "PATCH", url, json={"active": False})
    assert off.status_code == 200 and off.json()["active"] is False
    assert await _emit(sessionmaker, _project(world), WebhookEvent.run_finished) == 0
    assert await deliver_due(resources) == 0 and receiver.requests == []
    (ended,) = await _deliveries(sessionmaker)
    assert ended.status == "failed" and "deactivated" in (ended.error or "")

    assert (await world.call("owner", "PATCH", url, json={"active": True})).status_code == 200
    assert await _emit(sessionmaker, _project(world), WebhookEvent.run_finished) == 1
    assert await deliver_due(resources) == 1 and len(receiver.requests) == 1  # the old one stays ended
    audit = (await world.call("owner", "GET", f"{P}/audit", params={"action": "webhook.update"})).json()
    assert [(r["before"], r["after"]) for r in audit["items"]] == [
        ({"active": False}, {"active": True}),
        ({"active": True}, {"active": False}),
    ]


async def test_the_delivery_loop_sends_and_survives_failed_passes(
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    resources: ApiResources,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _hook(world, receiver.url, ["run.started"])
    await _emit(sessionmaker, _project(world), WebhookEvent.run_started)
    nowhere = create_engine(settings, url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    broken = dataclasses.replace(resources, sessionmaker=create_sessionmaker(nowhere))
    loops = [asyncio.create_task(delivery_loop(r, every_s=0.05)) for r in (broken, resources)]
    try:
        for _ in range(200):
            statuses = {d.status for d in await _deliveries(sessionmaker)}
            if statuses == {"delivered"} and "webhook delivery pass failed" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert len(receiver.requests) == 1
        assert "webhook delivery pass failed" in caplog.text
        assert not any(loop.done() for loop in loops)  # a failed pass is not the end of the loop
    finally:
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await nowhere.dispose()
    (delivery,) = await _deliveries(sessionmaker)
    assert delivery.status == "delivered" and delivery.attempts == 1
