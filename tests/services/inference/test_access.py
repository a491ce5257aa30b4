"""Who reaches what in the inference service: ids win over slugs, /metrics is not for everyone, and
made-up tokens cannot push real keys out of the key cache."""

from __future__ import annotations

import contextlib
import secrets
import uuid

import httpx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.app import create_app
from services.inference.auth import KEY_CACHE_SIZE, KeyChecker
from shared.config import Settings
from shared.errors import Unauthorized
from shared.models import ApiKey, Event, Project, ProjectMember
from tests.support.world import World, bearer


async def test_events_naming_a_projects_id_reach_that_project(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Another project whose slug is B's id (a row from before slugs were checked) does not catch B's
    events."""
    b = world.projects["search-b"]
    owner = uuid.UUID(world.users["owner"])
    async with sessionmaker() as session:
        shadow = Project(slug=b["id"], name="shadow", owner_id=owner)
        session.add(shadow)
        await session.flush()
        session.add(ProjectMember(project_id=shadow.id, user_id=owner, role="owner"))
        await session.commit()
    body = {"project": b["id"], "events": [{"type": "click", "user_id": "u1", "product_id": "p1"}]}
    sent = await inference_client.post("/events", json=body, headers=bearer(world.admin))
    assert sent.status_code == 202, sent.text
    async with sessionmaker() as session:
        stored = (await session.execute(select(Event.project_id))).scalars().all()
    assert [str(p) for p in stored] == [b["id"]]


async def test_metrics_need_the_metrics_token_or_an_admin_key(
    world: World, settings: Settings, inference_client: httpx.AsyncClient
) -> None:
    assert (await inference_client.get("/metrics")).status_code == 401
    service = await inference_client.get("/metrics", headers=bearer(world.keys["service"]))
    assert service.status_code == 403 and "RECFORGE_METRICS_TOKEN" in service.json()["message"]
    assert (await inference_client.get("/metrics", headers=bearer(world.admin))).status_code == 200

    scraped = settings.model_copy(update={"metrics_token": SecretStr("scrape-" + secrets.token_hex(8))})
    app = create_app(scraped)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
            token = scraped.metrics_token.get_secret_value()  # type: ignore[union-attr]
            ok = await client.get("/metrics", headers=bearer(token))
            wrong = await client.get("/metrics", headers=bearer(token + "x"))
    assert ok.status_code == 200 and "recforge_inference" in ok.text
    assert wrong.status_code == 401


async def test_made_up_tokens_do_not_evict_real_keys(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A key the cache holds keeps answering from it for KEY_CACHE_S, even after it is revoked; a flood
    of unknown tokens larger than the cache must not push it out (and make it look revoked sooner)."""
    checker = KeyChecker(sessionmaker, settings.secret_key.get_secret_value())
    key = f"Bearer {world.keys['service']}"
    caller = await checker.check(key)
    async with sessionmaker() as session:
        await session.execute(
            update(ApiKey).where(ApiKey.id == caller.key_id).values(revoked_at=ApiKey.created_at)
        )
        await session.commit()
    for _ in range(KEY_CACHE_SIZE + 50):
        with contextlib.suppress(Unauthorized):
            await checker.check(f"Bearer rf_{secrets.token_urlsafe(16)}")
    assert (await checker.check(key)).key_id == caller.key_id


async def test_another_projects_key_cannot_tell_whether_a_project_exists(
    world: World, inference_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """search-a's service key asks about search-b (which exists) and about a project that does not:
    the answers are the same. A person's key is refused before any project is looked up."""
    b = world.projects["search-b"]
    key = bearer(world.keys["service"])
    for path, field in (("/recommend", "project"), ("/events", "project")):
        extra: dict[str, object] = (
            {"query": "drill"}
            if path == "/recommend"
            else {"events": [{"type": "click", "product_id": "p1"}]}
        )
        answers = []
        for ref in (b["slug"], b["id"], "no-such-project", str(uuid.uuid4())):
            response = await inference_client.post(path, json={field: ref, **extra}, headers=key)
            answers.append((response.status_code, response.json()["error"]))
        assert set(answers) == {(404, "not_found")}, (path, answers)
        person = await inference_client.post(
            path, json={field: b["id"], **extra}, headers=bearer(world.keys["owner_b"])
        )
        stranger = await inference_client.post(
            path, json={field: "no-such-project", **extra}, headers=bearer(world.keys["owner_b"])
        )
        assert person.status_code == stranger.status_code == 403
