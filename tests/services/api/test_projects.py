from __future__ import annotations

import json
import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.models import AuditLog, ModelVersion, Project, ProjectMember, Task, TrainingJob
from tests.support.world import World


async def _counts(session: AsyncSession) -> tuple[int, int, int]:
    counts = []
    for model in (Project, Task, AuditLog):
        counts.append((await session.execute(select(func.count()).select_from(model))).scalar_one())
    return counts[0], counts[1], counts[2]


async def test_members_of_one_project_cannot_see_another(world: World) -> None:
    b = world.projects["search-b"]
    for ref in (b["id"], b["slug"]):
        response = await world.call("member", "GET", f"/api/v1/projects/{ref}")
        assert response.status_code == 404
        assert (
            response.json() == (await world.call("member", "GET", "/api/v1/projects/no-such-project")).json()
        )
    a = world.projects["search-a"]
    for ref in (a["id"], a["slug"]):
        mine = await world.call("member", "GET", f"/api/v1/projects/{ref}")
        assert mine.status_code == 200 and mine.json()["id"] == a["id"]
    listed = await world.call("member", "GET", "/api/v1/projects")
    assert [p["slug"] for p in listed.json()["items"]] == ["search-a"]
    assert listed.json()["items"][0]["my_role"] == "member"
    everything = await world.call("admin", "GET", "/api/v1/projects")
    assert {p["slug"] for p in everything.json()["items"]} == {"search-a", "search-b"}


async def test_viewer_writes_are_403_and_change_nothing(world: World, session: AsyncSession) -> None:
    before = await _counts(session)
    assert (
        await world.call("viewer", "POST", "/api/v1/projects/search-a/tasks", json={"title": "x"})
    ).status_code == 403
    assert (
        await world.call("viewer", "PATCH", "/api/v1/projects/search-a", json={"name": "x"})
    ).status_code == 403
    assert await _counts(session) == before


async def test_service_key_reaches_nothing_in_the_project_api(world: World) -> None:
    for method, url in (
        ("GET", "/api/v1/projects"),
        ("GET", "/api/v1/projects/search-a"),
        ("GET", "/api/v1/projects/search-a/tasks"),
        ("POST", "/api/v1/projects/search-a/tasks"),
        ("GET", "/api/v1/projects/search-b"),
        ("GET", "/api/v1/users/me"),
        ("GET", "/api/v1/keys"),
    ):
        response = await world.call("service", method, url, json={"title": "x"} if method == "POST" else None)
        assert response.status_code == 403, (method, url, response.text)
        assert "service keys" in response.json()["message"]


async def test_malformed_bodies_answer_422_and_write_nothing(world: World, session: AsyncSession) -> None:
    before = await _counts(session)
    cases = [
        ("POST", "/api/v1/projects", {"slug": "Bad Slug!", "name": ""}, {"slug", "name"}),
        ("POST", "/api/v1/projects", {"slug": "ok-slug", "name": "n", "budget": {"cpu_hours": -1}}, {"budget"}),
        ("POST", "/api/v1/projects", {"slug": "ok-slug", "name": "n", "start_date": "2026-02-01",
                                      "target_date": "2026-01-01"}, set()),
        ("POST", "/api/v1/projects", {"slug": "ok-slug", "name": "n", "surprise": 1}, {"surprise"}),
        ("POST", "/api/v1/projects/search-a/tasks", {"title": "t", "estimate_hours": -2}, {"estimate_hours"}),
        ("POST", "/api/v1/projects/search-a/tasks", {"title": "t", "assignee_id": "not-a-uuid"}, {"assignee_id"}),
        ("POST", "/api/v1/projects/search-a/tasks", {"title": "t", "assignee_id": world.users["outsider"]},
         {"assignee_id"}),
        ("POST", "/api/v1/projects/search-a/tasks", {"title": "t", "priority": "whenever"}, {"priority"}),
        ("PATCH", "/api/v1/projects/search-a", {"status": None}, set()),
    ]  # fmt: skip
    for method, url, body, fields in cases:
        response = await world.call("owner", method, url, json=body)
        assert response.status_code == 422, (body, response.text)
        locs = {str(e["loc"][1]) for e in response.json()["detail"] if len(e.get("loc", [])) > 1}
        assert fields <= locs, (body, locs)
    not_json = await world.client.post(
        "/api/v1/projects",
        content=b"{nope",
        headers={**world.as_("owner"), "content-type": "application/json"},
    )
    assert not_json.status_code == 422
    assert await _counts(session) == before


async def test_slug_conflict_and_project_status_workflow(world: World) -> None:
    taken = await world.call("owner", "POST", "/api/v1/projects", json={"slug": "search-b", "name": "x"})
    assert taken.status_code == 409
    path = "/api/v1/projects/search-a"
    assert (await world.call("owner", "PATCH", path, json={"status": "done"})).status_code == 409
    for status in ("active", "paused", "active", "done", "archived"):
        response = await world.call("owner", "PATCH", path, json={"status": status})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    final = await world.call("owner", "PATCH", path, json={"status": "active"})
    assert final.status_code == 409 and final.json()["detail"]["allowed"] == ["none"]


async def test_a_project_always_keeps_an_owner(world: World) -> None:
    members = "/api/v1/projects/search-a/members"
    owner = world.users["owner"]
    assert (await world.call("owner", "DELETE", f"{members}/{owner}")).status_code == 409
    assert (
        await world.call("owner", "PATCH", f"{members}/{owner}", json={"role": "member"})
    ).status_code == 409
    # Hand over: make the maintainer an owner, then the first owner may step down.
    promote = await world.call(
        "owner", "PATCH", f"{members}/{world.users['maintainer']}", json={"role": "owner"}
    )
    assert promote.status_code == 200
    assert (
        await world.call("owner", "PATCH", f"{members}/{owner}", json={"role": "member"})
    ).status_code == 200
    project = (await world.call("admin", "GET", "/api/v1/projects/search-a")).json()
    assert project["owner_id"] == world.users["maintainer"]
    # Maintainers cannot touch owners; duplicates conflict; unknown users are 422.
    again = await world.call(
        "owner", "POST", members, json={"user_id": world.users["viewer"], "role": "viewer"}
    )
    assert again.status_code == 403  # "owner" is now a plain member
    dup = await world.call(
        "maintainer", "POST", members, json={"user_id": world.users["viewer"], "role": "viewer"}
    )
    assert dup.status_code == 409
    unknown = await world.call(
        "maintainer", "POST", members, json={"user_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert unknown.status_code == 422


async def test_removed_members_tasks_become_unassigned(world: World) -> None:
    task = await world.call(
        "owner",
        "POST",
        "/api/v1/projects/search-a/tasks",
        json={"title": "t", "assignee_id": world.users["member"]},
    )
    assert task.json()["assignee_id"] == world.users["member"]
    await world.call("owner", "DELETE", f"/api/v1/projects/search-a/members/{world.users['member']}")
    assert (await world.call("owner", "GET", f"/api/v1/tasks/{task.json()['id']}")).json()[
        "assignee_id"
    ] is None
    assert (await world.call("member", "GET", f"/api/v1/tasks/{task.json()['id']}")).status_code == 404


async def test_progress_matches_the_tasks(world: World, session: AsyncSession) -> None:
    p = "/api/v1/projects/search-a"
    m1 = (
        await world.call(
            "owner", "POST", f"{p}/milestones", json={"title": "Baseline", "due_date": "2020-01-01"}
        )
    ).json()
    m2 = (
        await world.call(
            "owner", "POST", f"{p}/milestones", json={"title": "Launch", "due_date": "2999-01-01"}
        )
    ).json()
    specs = [  # (estimate, final status, milestone, due)
        (4, "done", m1["id"], "2020-01-01"),
        (6, "in_review", m1["id"], "2020-01-02"),
        (10, "done", m2["id"], None),
        (None, "todo", m2["id"], "2020-01-01"),
        (5, "blocked", None, None),
    ]
    path = {"done": ["in_progress", "in_review", "done"], "in_review": ["in_progress", "in_review"],
            "todo": [], "blocked": ["blocked"]}  # fmt: skip
    for estimate, final, milestone, due in specs:
        body = {
            "title": f"{final} {estimate}",
            "estimate_hours": estimate,
            "milestone_id": milestone,
            "due_date": due,
        }
        task = (await world.call("member", "POST", f"{p}/tasks", json=body)).json()
        for step in path[final]:
            moved = await world.call("member", "PATCH", f"/api/v1/tasks/{task['id']}", json={"status": step})
            assert moved.status_code == 200, moved.text

    project = (await session.execute(select(Project).where(Project.slug == "search-a"))).scalar_one()
    session.add_all(
        [
            TrainingJob(project_id=project.id, job_type="bi_encoder", status="running"),
            TrainingJob(project_id=project.id, job_type="bi_encoder", status="queued"),
            TrainingJob(project_id=project.id, job_type="bi_encoder", status="succeeded"),
            ModelVersion(project_id=project.id, version=1, task_type="bi_encoder", base_model="m",
                         metrics={"ndcg@10": 0.71}),
            ModelVersion(project_id=project.id, version=2, task_type="bi_encoder", base_model="m",
                         metrics={"ndcg@10": 0.93}),
        ]
    )  # fmt: skip
    await session.commit()

    progress = (await world.call("viewer", "GET", f"{p}/progress")).json()
    work = progress["work"]
    assert work["total_estimate_hours"] == 25 and work["done_estimate_hours"] == 14
    assert work["percent_done"] == 56.0
    assert work["tasks"] == {"todo": 1, "in_progress": 0, "in_review": 1, "done": 2, "blocked": 1}
    assert work["unestimated_tasks"] == 1
    assert work["overdue_tasks"] == 2  # in_review due 2020-01-02 and todo due 2020-01-01
    by_title = {m["title"]: m for m in progress["milestones"]}
    assert by_title["Baseline"]["percent_done"] == 40.0 and by_title["Baseline"]["overdue"] is True
    assert by_title["Launch"]["percent_done"] == 100.0 and by_title["Launch"]["overdue"] is False
    assert progress["jobs_running"] == 1 and progress["jobs_queued"] == 1
    best = progress["best_model"]
    assert best["version"] == 2 and best["value"] == 0.93 and best["meets_goal"] is True
    assert best["goal"] == {"metric": "ndcg@10", "operator": ">=", "value": 0.9}


async def test_budget_changes_are_owner_only_and_refuse_overspend(
    world: World, session: AsyncSession
) -> None:
    from services.api.projects.service import BudgetExceeded, ensure_budget

    updated = await world.call(
        "owner", "PATCH", "/api/v1/projects/search-a", json={"budget": {"cpu_hours": 2}}
    )
    assert updated.json()["budget"]["remaining_cpu_hours"] == 2
    project = (await session.execute(select(Project).where(Project.slug == "search-a"))).scalar_one()
    ensure_budget(project, "cpu", 1.5, 0.0)
    try:
        ensure_budget(project, "cpu", 1.5, 1.0)
    except BudgetExceeded as exc:
        assert exc.status_code == 409 and "2.00 of its 2.00 CPU-hours left" in exc.message
    else:
        raise AssertionError("over-budget work was not refused")
    refused = await world.call(
        "member", "PATCH", "/api/v1/projects/search-a", json={"budget": {"cpu_hours": 100}}
    )
    assert refused.status_code == 403


async def test_a_new_project_gets_the_default_budget_and_an_update_keeps_what_it_does_not_name(
    world: World, settings: Settings
) -> None:
    created = await world.call("owner", "POST", "/api/v1/projects", json={"slug": "fresh", "name": "Fresh"})
    assert created.status_code == 201, created.text
    budget = created.json()["budget"]
    assert (budget["cpu_hours"], budget["gpu_hours"]) == (
        settings.default_cpu_hours,
        settings.default_gpu_hours,
    )
    assert settings.default_cpu_hours == 10  # RECFORGE_DEFAULT_CPU_HOURS' default, as documented
    gpu = await world.call(
        "owner", "POST", "/api/v1/projects", json={"slug": "gpu", "name": "G", "budget": {"gpu_hours": 3}}
    )
    assert gpu.json()["budget"]["cpu_hours"] == settings.default_cpu_hours  # the field not given
    assert gpu.json()["budget"]["gpu_hours"] == 3
    raised = await world.call("owner", "PATCH", "/api/v1/projects/gpu", json={"budget": {"cpu_hours": 25}})
    assert raised.json()["budget"]["cpu_hours"] == 25 and raised.json()["budget"]["gpu_hours"] == 3


async def test_every_change_is_audited_with_its_actor(world: World, session: AsyncSession) -> None:
    task = (await world.call("member", "POST", "/api/v1/projects/search-a/tasks", json={"title": "a"})).json()
    await world.call("member", "PATCH", f"/api/v1/tasks/{task['id']}", json={"status": "in_progress"})
    entries = (await world.call("owner", "GET", "/api/v1/projects/search-a/audit?limit=2")).json()
    assert [e["action"] for e in entries["items"]] == ["task.update", "task.create"]
    update = entries["items"][0]
    assert update["actor_user_id"] == world.users["member"]
    assert update["before"] == {"status": "todo"} and update["after"] == {"status": "in_progress"}
    assert entries["next_cursor"]
    older = (
        await world.call("owner", "GET", f"/api/v1/projects/search-a/audit?cursor={entries['next_cursor']}")
    ).json()
    assert older["items"][0]["id"] < entries["items"][-1]["id"]
    actions = {e["action"] for e in older["items"]}
    assert {"project.create", "member.add"} <= actions
    all_actions = (await session.execute(select(AuditLog.action))).scalars().all()
    assert "api_key.create" in all_actions and "user.create" in all_actions


async def test_a_slug_may_not_read_as_a_uuid(world: World, session: AsyncSession) -> None:
    """Else a project could take another's id as its slug and shadow it in every URL."""
    before = await _counts(session)
    for slug in (world.projects["search-b"]["id"], str(uuid.uuid4()), uuid.uuid4().hex):
        response = await world.call("owner", "POST", "/api/v1/projects", json={"slug": slug, "name": "x"})
        assert response.status_code == 422, response.text
        assert "UUID" in json.dumps(response.json()["detail"])
    assert await _counts(session) == before


async def test_an_id_always_wins_over_a_slug(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A project whose slug is another project's id (a row from before slugs were checked) shadows
    nothing: the id names project B for B's people, and the shadow's owner does not reach B through it."""
    b = world.projects["search-b"]
    owner = uuid.UUID(world.users["owner"])
    async with sessionmaker() as session:
        shadow = Project(slug=b["id"], name="shadow", owner_id=owner)
        session.add(shadow)
        await session.flush()
        session.add(ProjectMember(project_id=shadow.id, user_id=owner, role="owner"))
        await session.commit()
    mine = await world.call("owner_b", "GET", f"/api/v1/projects/{b['id']}")
    assert mine.status_code == 200 and mine.json()["slug"] == "search-b"
    assert (await world.call("owner_b", "GET", f"/api/v1/projects/{b['id']}/progress")).status_code == 200
    assert (await world.call("owner", "GET", f"/api/v1/projects/{b['id']}")).status_code == 404
    assert (await world.call("owner", "GET", f"/api/v1/projects/{shadow.id}")).json()["name"] == "shadow"
