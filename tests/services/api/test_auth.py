from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, AuditLog, User
from tests.support.world import World, bearer


async def test_requests_without_a_valid_key_are_401(api_client: httpx.AsyncClient, db: object) -> None:
    for headers in ({}, bearer("rf_not-a-key"), {"Authorization": "Basic abc"}):
        response = await api_client.get("/api/v1/projects", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_users_and_keys_contract(
    api_client: httpx.AsyncClient, admin_key: str, session: AsyncSession
) -> None:
    created = await api_client.post(
        "/api/v1/users", json={"name": "Grace", "email": "Grace@Example.com"}, headers=bearer(admin_key)
    )
    assert created.status_code == 201
    user = created.json()
    assert user["email"] == "grace@example.com" and "id" in user

    duplicate = await api_client.post(
        "/api/v1/users", json={"name": "G2", "email": "grace@example.com"}, headers=bearer(admin_key)
    )
    assert duplicate.status_code == 409

    bad = await api_client.post(
        "/api/v1/users", json={"name": "", "email": "nope"}, headers=bearer(admin_key)
    )
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "name"), ("body", "email")}

    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    key = await api_client.post(
        "/api/v1/keys",
        json={"user_id": user["id"], "name": "ci", "expires_at": expires},
        headers=bearer(admin_key),
    )
    assert key.status_code == 201
    body = key.json()
    assert body["user_id"] == user["id"] and body["key"].startswith("rf_") and body["role"] == "user"
    me = await api_client.get("/api/v1/users/me", headers=bearer(body["key"]))
    assert me.json()["id"] == user["id"]

    listed = await api_client.get("/api/v1/keys", headers=bearer(body["key"]))
    assert [k["id"] for k in listed.json()["items"]] == [body["id"]]
    assert "key" not in listed.json()["items"][0]
    stored = (await session.execute(select(ApiKey).where(ApiKey.id == body["id"]))).scalar_one()
    assert body["key"] not in (stored.key_hash, stored.key_prefix)


async def test_only_admins_create_users_and_admin_keys(world: World) -> None:
    assert (
        await world.call("owner", "POST", "/api/v1/users", json={"name": "x", "email": "x@e.com"})
    ).status_code == 403
    admin_key = await world.call(
        "owner", "POST", "/api/v1/keys", json={"user_id": world.users["owner"], "name": "k", "role": "admin"}
    )
    assert admin_key.status_code == 403
    for_other = await world.call(
        "owner", "POST", "/api/v1/keys", json={"user_id": world.users["member"], "name": "k"}
    )
    assert for_other.status_code == 403


async def test_service_keys_need_owner_or_maintainer(world: World) -> None:
    as_member = await world.call(
        "member",
        "POST",
        "/api/v1/keys",
        json={"user_id": world.users["member"], "name": "k", "role": "service", "project_id": "search-a"},
    )
    assert as_member.status_code == 403
    no_project = await world.call(
        "owner",
        "POST",
        "/api/v1/keys",
        json={"user_id": world.users["owner"], "name": "k", "role": "service"},
    )
    assert no_project.status_code == 422


async def test_revoked_and_expired_keys_stop_working(world: World, session: AsyncSession) -> None:
    created = await world.call(
        "member", "POST", "/api/v1/keys", json={"user_id": world.users["member"], "name": "t"}
    )
    key = created.json()
    assert (await world.client.get("/api/v1/users/me", headers=bearer(key["key"]))).status_code == 200
    revoke = await world.call("member", "DELETE", f"/api/v1/keys/{key['id']}")
    assert revoke.status_code == 204
    after = await world.client.get("/api/v1/users/me", headers=bearer(key["key"]))
    assert after.status_code == 401 and "revoked" in after.json()["message"]
    # Someone else's key is invisible.
    assert (await world.call("outsider", "DELETE", f"/api/v1/keys/{key['id']}")).status_code == 404

    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    expired = await world.client.post(
        "/api/v1/keys",
        json={"user_id": world.users["member"], "name": "old", "expires_at": past},
        headers=bearer(world.admin),
    )
    response = await world.client.get("/api/v1/users/me", headers=bearer(expired.json()["key"]))
    assert response.status_code == 401 and "expired" in response.json()["message"]
    actions = (
        (await session.execute(select(AuditLog.action).where(AuditLog.entity_id == key["id"])))
        .scalars()
        .all()
    )
    assert actions == ["api_key.create", "api_key.revoke"]


async def test_user_count_unchanged_by_a_rejected_request(world: World, session: AsyncSession) -> None:
    before = (await session.execute(select(func.count()).select_from(User))).scalar_one()
    bad = await world.call(
        "admin", "POST", "/api/v1/users", json={"name": "n", "email": "n@e.com", "extra": 1}
    )
    assert bad.status_code == 422
    assert (await session.execute(select(func.count()).select_from(User))).scalar_one() == before


async def test_a_key_never_issues_a_key_that_outlives_it(world: World) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    expiring = await world.call(
        "admin",
        "POST",
        "/api/v1/keys",
        json={"user_id": world.users["member"], "name": "expiring", "expires_at": soon.isoformat()},
    )
    assert expiring.status_code == 201, expiring.text
    key = bearer(expiring.json()["key"])
    later = (soon + dt.timedelta(days=30)).isoformat()
    for body in ({"name": "forever"}, {"name": "later", "expires_at": later}):
        minted = await world.client.post(
            "/api/v1/keys", json={"user_id": world.users["member"], **body}, headers=key
        )
        assert minted.status_code == 201, minted.text
        assert dt.datetime.fromisoformat(minted.json()["expires_at"]) == soon
    sooner = (soon - dt.timedelta(hours=1)).isoformat()
    minted = await world.client.post(
        "/api/v1/keys",
        json={"user_id": world.users["member"], "name": "sooner", "expires_at": sooner},
        headers=key,
    )
    assert dt.datetime.fromisoformat(minted.json()["expires_at"]) == dt.datetime.fromisoformat(sooner)


async def test_removing_a_member_revokes_the_service_keys_they_issued(
    world: World, session: AsyncSession
) -> None:
    issued = await world.call(
        "maintainer",
        "POST",
        "/api/v1/keys",
        json={
            "user_id": world.users["maintainer"],
            "name": "storefront",
            "role": "service",
            "project_id": "search-a",
        },
    )
    assert issued.status_code == 201, issued.text
    a = world.projects["search-a"]["id"]
    removed = await world.call("owner", "DELETE", f"/api/v1/projects/{a}/members/{world.users['maintainer']}")
    assert removed.status_code == 204
    key = await session.get(ApiKey, issued.json()["id"])
    assert key is not None and key.revoked_at is not None
    other = await session.get(ApiKey, (await _key_id(world, "service")))
    assert other is not None and other.revoked_at is None  # the owner's service key stays
    audited = (
        await session.execute(
            select(AuditLog).where(AuditLog.action == "api_key.revoke", AuditLog.entity_id == str(key.id))
        )
    ).scalar_one()
    assert audited.after is not None and audited.after["reason"] == "its user left the project"


async def _key_id(world: World, who: str) -> str:
    listed = await world.call("owner", "GET", "/api/v1/keys")
    prefix = world.keys[who][:10]
    return str(next(k["id"] for k in listed.json()["items"] if k["prefix"] == prefix))
