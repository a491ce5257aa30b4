from __future__ import annotations

import itertools

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.tasks.service import TRANSITIONS
from shared.models import Task
from shared.models.enums import TaskStatus
from tests.support.world import World

TASKS = "/api/v1/projects/search-a/tasks"
# How to bring a new task (todo) to each status along legal moves.
ROUTE = {
    TaskStatus.todo: [],
    TaskStatus.in_progress: ["in_progress"],
    TaskStatus.in_review: ["in_progress", "in_review"],
    TaskStatus.done: ["in_progress", "in_review", "done"],
    TaskStatus.blocked: ["blocked"],
}


async def _task_in(world: World, status: TaskStatus) -> dict[str, object]:
    task = (await world.call("member", "POST", TASKS, json={"title": f"in {status.value}"})).json()
    for step in ROUTE[status]:
        response = await world.call("member", "PATCH", f"/api/v1/tasks/{task['id']}", json={"status": step})
        assert response.status_code == 200, response.text
        task = response.json()
    assert task["status"] == status.value
    return task


async def test_every_transition_legal_or_409_and_unchanged(world: World, session: AsyncSession) -> None:
    for source, target in itertools.product(TaskStatus, TaskStatus):
        if source == target:
            continue
        task = await _task_in(world, source)
        response = await world.call(
            "member",
            "PATCH",
            f"/api/v1/tasks/{task['id']}",
            json={"status": target.value, "title": "renamed"},
        )
        if target in TRANSITIONS[source]:
            assert response.status_code == 200, (source, target, response.text)
            assert response.json()["status"] == target.value and response.json()["title"] == "renamed"
            assert (response.json()["completed_at"] is not None) == (target == TaskStatus.done)
        else:
            assert response.status_code == 409, (source, target)
            assert response.json()["detail"]["from"] == source.value
            row = (await session.execute(select(Task).where(Task.id == task["id"]))).scalar_one()
            await session.refresh(row)
            assert (row.status, row.title) == (source.value, task["title"])  # nothing half-written


async def test_the_workflow_allows_the_documented_moves() -> None:
    allowed = {(s.value, t.value) for s, targets in TRANSITIONS.items() for t in targets}
    assert allowed == {
        ("todo", "in_progress"), ("todo", "blocked"),
        ("in_progress", "in_review"), ("in_progress", "blocked"), ("in_progress", "todo"),
        ("in_review", "done"), ("in_review", "in_progress"), ("in_review", "blocked"),
        ("blocked", "todo"), ("blocked", "in_progress"),
        ("done", "in_progress"),
    }  # fmt: skip


async def test_filters_and_cursor_pagination(world: World) -> None:
    me = world.users["member"]
    for i in range(7):
        body = {
            "title": f"t{i}",
            "labels": ["Data", "search"] if i % 2 else ["model"],
            "assignee_id": me if i < 3 else None,
            "due_date": f"2026-01-{10 + i:02d}",
        }
        assert (await world.call("owner", "POST", TASKS, json=body)).status_code == 201
    seen, cursor = [], None
    while True:
        url = f"{TASKS}?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await world.call("viewer", "GET", url)).json()
        seen += [t["title"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"t{i}" for i in range(7)]

    async def titles(query: str) -> list[str]:
        response = await world.call("member", "GET", f"{TASKS}?{query}")
        assert response.status_code == 200, response.text
        return [t["title"] for t in response.json()["items"]]

    assert await titles("assignee=me") == ["t0", "t1", "t2"]
    assert await titles(f"assignee={me}") == ["t0", "t1", "t2"]
    assert await titles("assignee=none") == ["t3", "t4", "t5", "t6"]
    assert await titles("label=data") == ["t1", "t3", "t5"]
    assert await titles("due_before=2026-01-12") == ["t0", "t1"]
    assert await titles("status=todo&status=done&label=model") == ["t0", "t2", "t4", "t6"]
    assert (await world.call("member", "GET", f"{TASKS}?limit=500")).status_code == 422
    assert (await world.call("member", "GET", f"{TASKS}?cursor=garbage")).status_code == 422
    assert (await world.call("member", "GET", f"{TASKS}?assignee=someone")).status_code == 422
    assert (await world.call("member", "GET", f"{TASKS}?status=finished")).status_code == 422


async def test_links_must_stay_in_the_project(world: World) -> None:
    other = (
        await world.call("owner_b", "POST", "/api/v1/projects/search-b/milestones", json={"title": "B1"})
    ).json()
    response = await world.call("owner", "POST", TASKS, json={"title": "t", "milestone_id": other["id"]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "milestone_id"]
    mine = (
        await world.call("owner", "POST", "/api/v1/projects/search-a/milestones", json={"title": "A1"})
    ).json()
    linked = await world.call("owner", "POST", TASKS, json={"title": "t", "milestone_id": mine["id"]})
    assert linked.status_code == 201 and linked.json()["milestone_id"] == mine["id"]


async def test_tasks_of_other_projects_are_404(world: World) -> None:
    task = (
        await world.call("owner_b", "POST", "/api/v1/projects/search-b/tasks", json={"title": "secret"})
    ).json()
    for method in ("GET", "PATCH", "DELETE"):
        response = await world.call(
            "member", method, f"/api/v1/tasks/{task['id']}", json={} if method == "PATCH" else None
        )
        assert response.status_code == 404
    assert (await world.call("member", "GET", f"/api/v1/tasks/{task['id']}/comments")).status_code == 404


async def test_comments(world: World) -> None:
    task = (await world.call("member", "POST", TASKS, json={"title": "c"})).json()
    for body in ("first", "second"):
        assert (
            await world.call("member", "POST", f"/api/v1/tasks/{task['id']}/comments", json={"body": body})
        ).status_code == 201
    comments = (await world.call("viewer", "GET", f"/api/v1/tasks/{task['id']}/comments")).json()
    assert [c["body"] for c in comments] == ["first", "second"]
    assert comments[0]["author_id"] == world.users["member"]
    assert (
        await world.call("member", "POST", f"/api/v1/tasks/{task['id']}/comments", json={"body": ""})
    ).status_code == 422
