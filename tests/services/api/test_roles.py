"""Every cell of the README's role table, run against the real API."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.support.world import World

README = Path(__file__).resolve().parents[3] / "README.md"
COLUMNS = ["admin", "owner", "maintainer", "member", "viewer", "outsider", "service"]
P = "/api/v1/projects/search-a"


def _table() -> list[tuple[str, list[str]]]:
    text = README.read_text()
    block = text.split("<!-- roles-table:start -->")[1].split("<!-- roles-table:end -->")[0]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")][2:]
    parsed = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        parsed.append((cells[0], cells[1:]))
    return parsed


async def _fresh_user(w: World) -> str:
    name = f"u{uuid.uuid4().hex[:8]}"
    response = await w.call("admin", "POST", "/api/v1/users", json={"name": name, "email": f"{name}@e.com"})
    return str(response.json()["id"])


async def read(w: World, who: str) -> list[httpx.Response]:
    return [
        await w.call(who, "GET", f"{P}{suffix}")
        for suffix in ("", "/members", "/tasks", "/milestones", "/progress")
    ]


async def update(w: World, who: str) -> list[httpx.Response]:
    return [await w.call(who, "PATCH", P, json={"description": f"by {who}"})]


async def budget(w: World, who: str) -> list[httpx.Response]:
    return [
        await w.call(
            who, "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 1}, "max_concurrent_jobs": 3}
        )
    ]


async def members(w: World, who: str) -> list[httpx.Response]:
    user_id = await _fresh_user(w)
    add = await w.call(who, "POST", f"{P}/members", json={"user_id": user_id, "role": "member"})
    if add.status_code != 201:
        return [add]
    change = await w.call(who, "PATCH", f"{P}/members/{user_id}", json={"role": "viewer"})
    remove = await w.call(who, "DELETE", f"{P}/members/{user_id}")
    return [add, change, remove]


async def owner_role(w: World, who: str) -> list[httpx.Response]:
    user_id = await _fresh_user(w)
    return [await w.call(who, "POST", f"{P}/members", json={"user_id": user_id, "role": "owner"})]


async def tasks(w: World, who: str) -> list[httpx.Response]:
    created = await w.call(who, "POST", f"{P}/tasks", json={"title": f"task by {who}"})
    if created.status_code != 201:
        return [created]
    task = created.json()["id"]
    moved = await w.call(who, "PATCH", f"/api/v1/tasks/{task}", json={"status": "in_progress"})
    comment = await w.call(who, "POST", f"/api/v1/tasks/{task}/comments", json={"body": "on it"})
    return [created, moved, comment]


async def delete_tasks(w: World, who: str) -> list[httpx.Response]:
    task = (await w.call("admin", "POST", f"{P}/tasks", json={"title": "to delete"})).json()["id"]
    return [await w.call(who, "DELETE", f"/api/v1/tasks/{task}")]


async def milestones(w: World, who: str) -> list[httpx.Response]:
    created = await w.call(who, "POST", f"{P}/milestones", json={"title": f"M {uuid.uuid4().hex[:6]}"})
    if created.status_code != 201:
        return [created]
    mid = created.json()["id"]
    edited = await w.call(who, "PATCH", f"/api/v1/milestones/{mid}", json={"status": "closed"})
    deleted = await w.call(who, "DELETE", f"/api/v1/milestones/{mid}")
    return [created, edited, deleted]


async def audit(w: World, who: str) -> list[httpx.Response]:
    return [await w.call(who, "GET", f"{P}/audit")]


async def import_dataset(w: World, who: str) -> list[httpx.Response]:
    body = f"product_id,title\np-{uuid.uuid4().hex[:8]},Drill by {who}\n".encode()
    return [
        await w.call(
            who, "POST", f"{P}/datasets", files=[("file", ("products.csv", body))], data={"kind": "catalog"}
        )
    ]


async def training_jobs(w: World, who: str) -> list[httpx.Response]:
    await w.call("admin", "PATCH", P, json={"budget": {"cpu_hours": 1000, "gpu_hours": 0}})
    body = b"query,product_id,grade\ndrill,p1,3\nsaw,p2,1\n"
    data = await w.call(
        "admin", "POST", f"{P}/datasets", files=[("file", ("j.csv", body))], data={"kind": "relevance"}
    )
    job = {
        "job_type": "bi_encoder",
        "dataset_version_id": data.json()["version_id"],
        "compute_limit_hours": 0.1,
    }
    submitted = await w.call(who, "POST", f"{P}/training-jobs", json=job)
    if submitted.status_code != 202:
        return [submitted]
    job_id = submitted.json()["id"]
    cancelled = await w.call(who, "POST", f"/api/v1/training-jobs/{job_id}/cancel")
    retried = await w.call(who, "POST", f"/api/v1/training-jobs/{job_id}/retry")
    return [submitted, cancelled, retried]


async def labeling_queues(w: World, who: str) -> list[httpx.Response]:
    await w.call("admin", "PATCH", P, json={"budget": {"cpu_hours": 1000, "gpu_hours": 0}})
    catalog = b"product_id,title\np1,Drill\np2,Saw\n"
    await w.call(
        "admin", "POST", f"{P}/datasets", files=[("file", ("c.csv", catalog))], data={"kind": "catalog"}
    )
    judged = b"query,product_id,grade\ndrill,p1,3\n"
    data = await w.call(
        "admin", "POST", f"{P}/datasets", files=[("file", ("j.csv", judged))], data={"kind": "relevance"}
    )
    body = {
        "name": "by role",
        "budget": 2,
        "strategy": "random",
        "dataset_version_id": data.json()["version_id"],
        "labellers": [w.users["member"]],
        "compute_limit_hours": 0.1,
    }
    return [await w.call(who, "POST", f"{P}/labeling-queues", json=body)]


async def promote(w: World, who: str) -> list[httpx.Response]:
    from tests.factories import add_version

    assert w.sessionmaker is not None
    number = int(uuid.uuid4().int % 1_000_000) + 10
    version = await add_version(w.sessionmaker, w.projects["search-a"]["id"], number=number)
    return [await w.call(who, "POST", f"/api/v1/model-versions/{version}/promote")]


async def merchandising(w: World, who: str) -> list[httpx.Response]:
    created = await w.call(
        who, "POST", f"{P}/merchandising-rules", json={"action": "hide", "product_id": "p1"}
    )
    if created.status_code != 201:
        return [created]
    return [created, await w.call(who, "DELETE", f"/api/v1/merchandising-rules/{created.json()['id']}")]


async def service_key(w: World, who: str) -> list[httpx.Response]:
    user = w.users.get(who, w.users["owner"]) if who != "admin" else w.users["owner"]
    body = {"user_id": user, "name": "svc", "role": "service", "project_id": "search-a"}
    return [await w.call(who, "POST", "/api/v1/keys", json=body)]


async def create_project(w: World, who: str) -> list[httpx.Response]:
    return [
        await w.call(who, "POST", "/api/v1/projects", json={"slug": f"p-{uuid.uuid4().hex[:8]}", "name": "n"})
    ]


async def create_users(w: World, who: str) -> list[httpx.Response]:
    name = f"n{uuid.uuid4().hex[:8]}"
    return [await w.call(who, "POST", "/api/v1/users", json={"name": name, "email": f"{name}@e.com"})]


OPERATIONS: dict[str, Callable[[World, str], Awaitable[list[httpx.Response]]]] = {
    "Read the project, its members, tasks, milestones and progress": read,
    "Update name, description, goal, dates, status": update,
    "Change the compute budget and job limit": budget,
    "Add, change and remove members": members,
    "Grant, change or remove the owner role": owner_role,
    "Create, edit, move and comment on tasks": tasks,
    "Delete tasks": delete_tasks,
    "Create, edit and delete milestones": milestones,
    "Read the audit log": audit,
    "Import datasets (new dataset versions)": import_dataset,
    "Submit, cancel and retry training jobs": training_jobs,
    "Create labelling queues (label: the queue's labellers only)": labeling_queues,
    "Promote model versions (deployments, canaries)": promote,
    "Create and delete merchandising rules": merchandising,
    "Issue a service key for the project": service_key,
    "Create a project (and become its owner)": create_project,
    "Create users": create_users,
}

TABLE = _table()


def test_the_table_covers_every_operation() -> None:
    assert [op for op, _ in TABLE] == list(OPERATIONS)
    assert all(len(cells) == len(COLUMNS) for _, cells in TABLE)


@pytest.mark.parametrize(("operation", "cells"), TABLE, ids=[re.sub(r"\W+", "-", op)[:40] for op, _ in TABLE])
async def test_role_table_row(world: World, operation: str, cells: list[str]) -> None:
    failures = []
    for who, expected in zip(COLUMNS, cells, strict=True):
        responses = await OPERATIONS[operation](world, who)
        for response in responses:
            ok = (
                200 <= response.status_code < 300
                if expected == "✓"
                else response.status_code == int(expected)
            )
            if not ok:
                failures.append(
                    f"{who}: expected {expected}, got {response.status_code} {response.text[:150]}"
                )
    assert not failures, "\n".join(failures)
