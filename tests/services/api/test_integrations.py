"""Jira and Git, both ways, against a Jira-compatible test server (tests/support/jira.py) and GitHub's and
GitLab's push payloads: tasks become issues and follow moves, Jira's webhook moves tasks by RecForge's
rules (a refused move comes back as a comment), the ML lifecycle comments, forged calls change nothing,
and the Jira token is never answered or logged."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.deps import ApiResources
from services.api.integrations.sync import refresh_webhooks, sync_due
from services.api.webhooks.service import emit
from shared.config import Settings
from shared.models import AuditLog, JiraConnection, JiraOutbox
from shared.models.enums import WebhookEvent
from tests.factories import add_version
from tests.support.jira import JiraState, encode, issue_updated, jira_server, signed
from tests.support.pipelines import api_resources
from tests.support.world import World

P = "/api/v1/projects/search-a"


@pytest.fixture
async def resources(db: AsyncEngine, settings: Settings) -> AsyncIterator[ApiResources]:
    """An api process's resources, whose retries wait next to nothing."""
    async with api_resources(settings.model_copy(update={"webhook_backoff_s": 0.001})) as made:
        yield made


@pytest.fixture
def jira() -> Iterator[tuple[str, JiraState]]:
    state = JiraState()
    state.users.append(
        {"accountId": "acc-member", "emailAddress": "member@example.com", "displayName": "Member"}
    )
    with jira_server(state) as running:
        yield running


async def _connect(world: World, url: str, state: JiraState, **more: Any) -> dict[str, Any]:
    body = {
        "site_url": url,
        "project_key": state.project_key,
        "user_email": state.email,
        "api_token": state.token,
        **more,
    }
    response = await world.call("owner", "PUT", f"{P}/integrations/jira", json=body)
    assert response.status_code == 200, response.text
    assert state.token not in response.text
    return dict(response.json())


async def _sync(resources: ApiResources) -> None:
    while await sync_due(resources):
        pass


async def test_tasks_and_jira_issues_follow_each_other(
    world: World,
    jira: tuple[str, JiraState],
    resources: ApiResources,
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url, state = jira
    refused = await world.call(
        "owner", "PUT", f"{P}/integrations/jira",
        json={"site_url": url, "project_key": "SHOP", "user_email": state.email, "api_token": "wrong"},
    )  # fmt: skip
    assert refused.status_code == 422 and "did not accept the credentials" in refused.json()["message"]
    unknown = await world.call(
        "owner", "PUT", f"{P}/integrations/jira",
        json={"site_url": url, "project_key": "NOPE", "user_email": state.email, "api_token": state.token},
    )  # fmt: skip
    assert unknown.status_code == 422 and "no project NOPE" in unknown.json()["message"]
    member = await world.call("member", "PUT", f"{P}/integrations/jira", json={})
    assert member.status_code in (403, 422)
    connected = await _connect(world, url, state, status_map={"in_review": "In Review"})
    secret = connected["webhook_secret"]
    [hook] = state.webhooks.values()
    assert hook["jqlFilter"] == "project = SHOP" and hook["url"] == connected["webhook_url"]
    assert connected["webhook_expires_at"] is not None

    # a task made in RecForge appears in Jira with its mapped status
    created = await world.call("member", "POST", f"{P}/tasks", json={"title": "Tune the reranker"})
    assert created.status_code == 201, created.text
    task = created.json()
    await _sync(resources)
    [issue] = state.issues.values()
    assert issue["key"] == "SHOP-1" and issue["fields"]["summary"] == "Tune the reranker"
    assert issue["fields"]["status"]["name"] == "To Do"  # todo's mapped status
    started = await world.call(
        "member", "PATCH", f"/api/v1/tasks/{task['id']}", json={"status": "in_progress"}
    )
    assert started.status_code == 200, started.text
    await _sync(resources)
    assert issue["fields"]["status"]["name"] == "In Progress"  # by the workflow's transition id 21
    assert ("GET", "/rest/api/3/issue/SHOP-1/transitions") in state.calls
    links = (await world.call("member", "GET", f"/api/v1/tasks/{task['id']}/links")).json()
    assert links["jira_issue_key"] == "SHOP-1" and links["key"] == f"RF-{task['number']}"

    # RecForge's changes follow, through the outbox; Jira asking to wait (429) only delays
    state.throttle = 1
    moved = await world.call(
        "member",
        "PATCH",
        f"/api/v1/tasks/{task['id']}",
        json={"status": "in_review", "title": "Tune the cross-encoder"},
    )
    assert moved.status_code == 200, moved.text
    await sync_due(resources)
    async with sessionmaker() as session:
        waiting = (
            (await session.execute(select(JiraOutbox).where(JiraOutbox.status == "pending"))).scalars().all()
        )
    assert waiting and "429" in (waiting[0].last_error or "")
    await _sync(resources)
    assert issue["fields"]["status"]["name"] == "In Review"
    assert issue["fields"]["summary"] == "Tune the cross-encoder"

    # Jira's changes come back by the webhook, following RecForge's rules
    body = encode(issue_updated({"id": issue["id"], "key": "SHOP-1", "fields": {"summary": "Tune the cross-encoder", "status": {"name": "Done"}, "assignee": {"emailAddress": "member@example.com"}}},
                                [{"field": "status", "fromString": "In Review", "toString": "Done"},
                                 {"field": "assignee", "fromString": None, "toString": "Member"}]))  # fmt: skip
    applied = await world.client.post(
        connected["webhook_url"].removeprefix("http://api"), content=body, headers=signed(secret, body)
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"] == ["status", "assignee"]
    now = (await world.call("member", "GET", f"/api/v1/tasks/{task['id']}")).json()
    assert now["status"] == "done" and now["assignee_id"] == world.users["member"] and now["completed_at"]

    # a move RecForge refuses (done -> todo) comes back as a comment, not applied
    body = encode(issue_updated({"id": issue["id"], "key": "SHOP-1", "fields": {}},
                                [{"field": "status", "fromString": "Done", "toString": "To Do"}]))  # fmt: skip
    bounced = await world.client.post(
        connected["webhook_url"].removeprefix("http://api"), content=body, headers=signed(secret, body)
    )
    assert bounced.status_code == 200 and bounced.json()["refused"]
    assert (await world.call("member", "GET", f"/api/v1/tasks/{task['id']}")).json()["status"] == "done"
    await _sync(resources)
    assert any(
        "RecForge refused this move: a task cannot go from done to todo" in t
        for t in state.comment_texts("SHOP-1")
    )

    # a forged webhook changes nothing
    forged = encode(issue_updated({"id": issue["id"], "key": "SHOP-1", "fields": {}},
                                  [{"field": "summary", "fromString": "x", "toString": "Hijacked"}]))  # fmt: skip
    path = connected["webhook_url"].removeprefix("http://api")
    for headers in (signed("not the secret", forged), {"Content-Type": "application/json"}):
        assert (await world.client.post(path, content=forged, headers=headers)).status_code == 401
    assert (await world.call("member", "GET", f"/api/v1/tasks/{task['id']}")).json()[
        "title"
    ] == "Tune the cross-encoder"

    # last writer wins per field; the audit log keeps both values
    async with sessionmaker() as session:
        entries = (
            (
                await session.execute(
                    select(AuditLog).where(AuditLog.entity_id == task["id"]).order_by(AuditLog.id)
                )
            )
            .scalars()
            .all()
        )
    from_jira = [e for e in entries if (e.after or {}).get("source") == "jira"]
    assert {"status": "in_review"} in [e.before for e in from_jira]
    assert any(e.after["status"] == "done" for e in from_jira if "status" in e.after)

    # the ML lifecycle: a refused gate becomes a comment on the issue of the task linked to its candidate
    version = await add_version(sessionmaker, world.projects["search-a"]["id"], number=7)
    linked = await world.call(
        "member", "POST", f"{P}/tasks", json={"title": "Ship model 7", "model_version_id": version}
    )
    await _sync(resources)
    project_id = uuid.UUID(world.projects["search-a"]["id"])
    async with sessionmaker() as session:
        await emit(session, project_id, WebhookEvent.gate_refused,
                   {"run_id": uuid.uuid4(), "candidate_version_id": version, "reason": "ndcg@10 dropped 0.03 (max 0.01)"})  # fmt: skip
        await session.commit()
    await _sync(resources)
    key = (await world.call("member", "GET", f"/api/v1/tasks/{linked.json()['id']}/links")).json()[
        "jira_issue_key"
    ]
    [comment] = state.comment_texts(key)
    assert "The gate refused a candidate" in comment and "ndcg@10 dropped 0.03" in comment

    # the webhook is refreshed before Jira's 30 days run out
    async with sessionmaker() as session:
        row = (await session.execute(select(JiraConnection))).scalar_one()
        row.webhook_expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        await session.commit()
    assert await refresh_webhooks(resources) == 1
    shown = (await world.call("member", "GET", f"{P}/integrations/jira")).json()
    assert dt.datetime.fromisoformat(shown["webhook_expires_at"]) > dt.datetime.now(dt.UTC) + dt.timedelta(
        days=29
    )
    assert shown["pending_calls"] == 0 and shown["last_error"] is None

    # the token is never answered, audited or logged
    for response in (
        await world.call("member", "GET", f"{P}/integrations/jira"),
        await world.call("owner", "GET", f"{P}/audit"),
    ):
        assert state.token not in response.text and secret not in response.text
    logged = [record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records]
    assert not [line for line in logged if state.token in line]
    assert (await world.call("outsider", "GET", f"{P}/integrations/jira")).status_code == 404


def _github(secret: str, payload: dict[str, Any], event: str = "push") -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": event,
        "Content-Type": "application/json",
    }


def _commit(sha: str, message: str) -> dict[str, Any]:
    return {
        "id": sha,
        "message": message,
        "timestamp": "2026-12-07T09:00:00+01:00",
        "url": f"https://github.com/shop/search/commit/{sha}",
        "author": {"name": "Ana", "email": "ana@shop.example"},
    }


async def test_pushes_link_commits_to_tasks_and_closes_moves_them(world: World) -> None:
    assert (
        await world.call("member", "PUT", f"{P}/integrations/git", json={"provider": "github"})
    ).status_code == 403
    connected = await world.call("owner", "PUT", f"{P}/integrations/git", json={"provider": "github"})
    assert connected.status_code == 200, connected.text
    secret, path = connected.json()["secret"], connected.json()["push_url"].removeprefix("http://api")
    assert secret not in (await world.call("member", "GET", f"{P}/integrations/git")).text
    first = (await world.call("member", "POST", f"{P}/tasks", json={"title": "BM25 fallback"})).json()
    second = (await world.call("member", "POST", f"{P}/tasks", json={"title": "Tune the reranker"})).json()
    assert (first["number"], second["number"]) == (1, 2)

    push = {
        "ref": "refs/heads/main",
        "repository": {"full_name": "shop/search", "html_url": "https://github.com/shop/search"},
        "commits": [
            _commit("a" * 40, "Add a BM25 fallback (RF-1)"),
            _commit("b" * 40, "Closes RF-2: a smaller learning rate for the reranker"),
            _commit("c" * 40, "Unrelated: RF-99 does not exist"),
        ],
    }
    body, headers = _github(secret, push)
    forged = dict(headers, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert (await world.client.post(path, content=body, headers=forged)).status_code == 401
    assert (await world.call("member", "GET", f"/api/v1/tasks/{first['id']}/links")).json()["commits"] == []

    pushed = await world.client.post(path, content=body, headers=headers)
    assert pushed.status_code == 200, pushed.text
    result = pushed.json()
    assert result["commits"] == 3 and len(result["linked"]) == 2
    assert [(m["from"], m["to"]) for m in result["moved"]] == [
        ("todo", "in_progress"),
        ("in_progress", "in_review"),
    ]
    assert (await world.call("member", "GET", f"/api/v1/tasks/{second['id']}")).json()[
        "status"
    ] == "in_review"
    assert (await world.call("member", "GET", f"/api/v1/tasks/{first['id']}")).json()["status"] == "todo"
    [commit] = (await world.call("member", "GET", f"/api/v1/tasks/{first['id']}/links")).json()["commits"]
    assert (
        commit["sha"] == "a" * 40
        and commit["ref"] == "refs/heads/main"
        and commit["repository"] == "shop/search"
    )
    again = await world.client.post(path, content=body, headers=headers)
    assert again.json()["linked"] == [] and again.json()["moved"] == []  # a re-push links nothing twice
    ping_body, ping_headers = _github(secret, {"zen": "Keep it logically awesome."}, event="ping")
    assert (await world.client.post(path, content=ping_body, headers=ping_headers)).json()["commits"] == 0

    # GitLab: the token header, and its payload's shape
    token = "gitlab-secret-token-0123456789"
    switched = await world.call(
        "owner", "PUT", f"{P}/integrations/git", json={"provider": "gitlab", "secret": token}
    )
    assert switched.json()["secret"] == token
    gitlab = {
        "object_kind": "push",
        "ref": "refs/heads/feature",
        "project": {"path_with_namespace": "shop/search", "web_url": "https://gitlab.com/shop/search"},
        "commits": [_commit("d" * 40, "fix: RF-1 handles empty queries")],
    }
    headers = {"X-Gitlab-Token": token, "X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}
    assert (
        await world.client.post(
            path, content=json.dumps(gitlab), headers={**headers, "X-Gitlab-Token": "nope"}
        )
    ).status_code == 401
    linked = await world.client.post(path, content=json.dumps(gitlab), headers=headers)
    assert linked.status_code == 200 and [row["key"] for row in linked.json()["linked"]] == ["RF-1"]
    commits = (await world.call("member", "GET", f"/api/v1/tasks/{first['id']}/links")).json()["commits"]
    assert [c["sha"][0] for c in commits] == ["a", "d"] and commits[1]["repository"] == "shop/search"


def test_the_test_jira_speaks_jiras_shapes() -> None:
    """The server the Jira tests run against refuses what Jira refuses (a sanity check of the double)."""
    import httpx

    with jira_server() as (url, state):
        anonymous = httpx.get(f"{url}/rest/api/3/myself")
        assert anonymous.status_code == 401 and anonymous.json()["errorMessages"]
        auth = (state.email, state.token)
        assert httpx.post(
            f"{url}/rest/api/3/issue", json={"fields": {"project": {"key": "SHOP"}}}, auth=auth
        ).json()["errors"]["summary"]
        made = httpx.post(
            f"{url}/rest/api/3/issue",
            json={"fields": {"project": {"key": "SHOP"}, "summary": "x"}},
            auth=auth,
        ).json()
        moves = httpx.get(f"{url}/rest/api/3/issue/{made['key']}/transitions", auth=auth).json()[
            "transitions"
        ]
        assert {t["to"]["name"] for t in moves} == {"In Progress", "In Review", "Done", "Blocked"}
        bad = httpx.post(
            f"{url}/rest/api/3/issue/{made['key']}/transitions", json={"transition": {"id": "999"}}, auth=auth
        )
        assert bad.status_code == 400


async def test_a_gate_the_controller_refuses_comments_on_the_pipelines_issue(
    world: World,
    jira: tuple[str, JiraState],
    resources: ApiResources,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    from services.api.pipelines import controller
    from tests.services.api.test_pipelines import _body, _data, _evaluated, _pipeline, _versions
    from tests.support.pipelines import add_run

    url, state = jira
    await _connect(world, url, state)
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden))
    watched = await world.call(
        "member", "POST", f"{P}/tasks", json={"title": "Nightly retraining", "labels": ["pipeline:nightly"]}
    )
    assert watched.status_code == 201, watched.text
    await _sync(resources)
    project, production, candidate = await _versions(world, sessionmaker)
    jobs = {
        "candidate": await _evaluated(sessionmaker, project, candidate, golden, 0.712),
        "production": await _evaluated(sessionmaker, project, production, golden, 0.731),
    }
    run_id = await add_run(
        sessionmaker, pipeline, step="gate",
        links={"candidate_version_id": candidate, "production_version_id": production, "gate_job_ids": jobs},
    )  # fmt: skip
    async with api_resources(settings) as running:
        await controller.advance(running, uuid.UUID(run_id))
    await _sync(resources)
    key = (await world.call("member", "GET", f"/api/v1/tasks/{watched.json()['id']}/links")).json()[
        "jira_issue_key"
    ]
    [comment] = state.comment_texts(key)
    assert "The gate refused a candidate" in comment
    assert "ndcg@10 0.712 < production 0.731 - 0.005" in comment
    # the task the controller made for the owner became an issue too, and was told the same
    made = [i for i in state.issues.values() if "Gate refused" in i["fields"]["summary"]]
    assert len(made) == 1 and any("The gate refused" in t for t in state.comment_texts(made[0]["key"]))


async def test_a_job_that_fails_comments_on_its_tasks_issue(
    world: World, jira: tuple[str, JiraState], resources: ApiResources, settings: Settings
) -> None:
    from tests.support.training import make_worker, run_worker, upload

    url, state = jira
    await _connect(world, url, state)
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    await upload(world, "catalog.csv", "product_id,title\np1,Drill\np2,Saw\n", "catalog")
    data = await upload(world, "j.csv", "query,product_id,grade\ndrill,p1,3\nsaw,p2,3\n", "relevance")
    job = await world.call(
        "member", "POST", f"{P}/training-jobs",
        json={"job_type": "bi_encoder", "dataset_version_id": data, "base_model": "example/no-such-model"},
    )  # fmt: skip
    assert job.status_code == 202, job.text
    task = await world.call(
        "member", "POST", f"{P}/tasks", json={"title": "First retriever", "training_job_id": job.json()["id"]}
    )
    await _sync(resources)
    await run_worker(make_worker(settings))
    failed = (await world.call("member", "GET", f"/api/v1/training-jobs/{job.json()['id']}")).json()
    assert failed["status"] == "failed"
    await _sync(resources)
    key = (await world.call("member", "GET", f"/api/v1/tasks/{task.json()['id']}/links")).json()[
        "jira_issue_key"
    ]
    [comment] = state.comment_texts(key)
    assert "A training job failed" in comment and job.json()["id"] in comment
