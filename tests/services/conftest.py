"""Fixtures of the service tests: an admin key, and a world of people, projects and keys made through
the API; a tiny BERT for the trainer and inference tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.auth.service import ensure_user, issue_key
from shared.config import Settings
from shared.models.enums import KeyRole
from tests.support.models import tiny_bert
from tests.support.world import World, bearer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
async def admin_key(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], db: Any) -> str:
    """What `recforge keys create --role admin` makes (tests/cli/test_cli.py runs the real command)."""
    async with sessionmaker() as session:
        user = await ensure_user(session, name="Admin", email="admin@example.com")
        issued = await issue_key(
            session, user=user, secret=settings.secret_key.get_secret_value(), name="boot", role=KeyRole.admin
        )
        await session.commit()
    return issued.key


async def _user(client: httpx.AsyncClient, admin: str, name: str) -> tuple[str, str]:
    created = await client.post(
        "/api/v1/users", json={"name": name, "email": f"{name}@example.com"}, headers=bearer(admin)
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    key = await client.post(
        "/api/v1/keys", json={"user_id": user_id, "name": "laptop"}, headers=bearer(admin)
    )
    assert key.status_code == 201, key.text
    return user_id, key.json()["key"]


@pytest.fixture
async def world(
    api_client: httpx.AsyncClient, admin_key: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> World:
    w = World(client=api_client, admin=admin_key, sessionmaker=sessionmaker)
    for name in ("owner", "maintainer", "member", "viewer", "outsider", "owner_b"):
        w.users[name], w.keys[name] = await _user(api_client, admin_key, name)
    for slug, owner in (("search-a", "owner"), ("search-b", "owner_b")):
        created = await w.call(
            owner,
            "POST",
            "/api/v1/projects",
            json={"slug": slug, "name": slug, "goal": {"metric": "NDCG@10", "value": 0.9}},
        )
        assert created.status_code == 201, created.text
        w.projects[slug] = created.json()
    a = w.projects["search-a"]["id"]
    for name in ("maintainer", "member", "viewer"):
        added = await w.call(
            "owner", "POST", f"/api/v1/projects/{a}/members", json={"user_id": w.users[name], "role": name}
        )
        assert added.status_code == 201, added.text
    service = await w.call(
        "owner",
        "POST",
        "/api/v1/keys",
        json={
            "user_id": w.users["owner"],
            "name": "recommender",
            "role": "service",
            "project_id": "search-a",
        },
    )
    assert service.status_code == 201, service.text
    w.keys["service"] = service.json()["key"]
    return w
