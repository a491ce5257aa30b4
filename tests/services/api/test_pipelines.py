"""Pipelines through the API and the controller: checked when saved, fired once per tick however many
controllers run, skipped over budget, refused at the gate with a reason and a task, held for approval,
and judged on shoppers' clicks into a promotion or a rollback. Each step's work is real (jobs submitted
through the training service, promotions through the deployments service); where a step waits on a
trainer or on shoppers, the test writes what they would have written (the evaluate job's result, the
impressions and clicks) and lets the controller take it from there. The whole loop with real training
and simulated shoppers is tests/faults/test_loop.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.pipelines import controller
from shared.config import Settings
from shared.models import AuditLog, Deployment, Event, Impression, PipelineRun, TrainingJob, WebhookDelivery
from shared.models.enums import JobStatus, RunStatus
from tests.factories import add_version
from tests.support.pipelines import PROJECT, add_run, api_resources, import_named, small_shop
from tests.support.world import World


async def _data(world: World) -> tuple[str, str]:
    """(training version, golden version) of the sample shop's judgments."""
    shop, train, golden = small_shop()
    await import_named(world, "catalog", shop.catalog_csv(), "catalog")
    trained = await import_named(world, "judgments", train, "relevance")
    gold = await import_named(world, "golden", golden, "relevance")
    return trained["version_id"], gold["version_id"]


def _body(train: str, golden: str, **over: Any) -> dict[str, Any]:
    return {
        "name": "nightly",
        "role": "retriever",
        "triggers": {"cron": "0 3 * * *"},
        "training": {
            "job_type": "bi_encoder",
            "dataset_version_id": train,
            "hyperparameters": {"max_steps": 5},
        },
        "gate": {"golden_dataset_version_id": golden, "rules": [{"metric": "ndcg@10", "max_drop": 0.005}]},
        "rollout": {"canary_percent": 50, "min_requests": 100, "max_looks": 1},
        **over,
    }


async def _pipeline(world: World, body: dict[str, Any]) -> dict[str, Any]:
    created = await world.call("owner", "POST", f"{PROJECT}/pipelines", json=body)
    assert created.status_code == 201, created.text
    found: dict[str, Any] = created.json()
    return found


async def _run(sessionmaker: async_sessionmaker[AsyncSession], run_id: str) -> PipelineRun:
    async with sessionmaker() as session:
        run = await session.get(PipelineRun, uuid.UUID(run_id))
        assert run is not None
        return run


async def _audit(sessionmaker: async_sessionmaker[AsyncSession], entity_id: str) -> list[str]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(AuditLog.action).where(AuditLog.entity_id == entity_id).order_by(AuditLog.id)
        )
        return list(rows.scalars())


async def _hook(world: World, *events: str) -> str:
    made = await world.call(
        "owner",
        "POST",
        f"{PROJECT}/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": list(events)},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def _deliveries(sessionmaker: async_sessionmaker[AsyncSession], event: str) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.execute(select(WebhookDelivery.payload).where(WebhookDelivery.event == event))
        return list(rows.scalars())


async def test_a_pipeline_is_checked_when_saved_not_when_it_runs(world: World) -> None:
    train, golden = await _data(world)

    async def refused(body: dict[str, Any], field: str, words: str, who: str = "owner") -> None:
        answer = await world.call(who, "POST", f"{PROJECT}/pipelines", json=body)
        assert answer.status_code == 422, answer.text
        assert field in answer.text and words in answer.text, answer.text

    await refused(
        _body(train, golden, role="reranker"),
        "training.job_type",
        "a reranker is trained by cross_encoder jobs",
    )
    await refused(
        _body(train, golden, gate={"golden_dataset_version_id": golden, "rules": [{"metric": "accuracy", "at_least": 1}]}),
        "gate.rules.0.metric",
        "it cannot give accuracy",
    )  # fmt: skip
    await refused(
        _body(train, train),
        "gate.golden_dataset_version_id",
        "the golden set must be data training never sees",
    )
    await refused(
        _body(train, golden, triggers={"cron": "every night"}), "triggers.cron", "not a cron schedule"
    )
    await refused(_body(train, golden, triggers={"cron": "0 0 30 2 *"}), "triggers.cron", "never comes")
    await refused(_body(train, golden, triggers={"cron": "0 0 * * * 2030"}), "triggers.cron", "five fields")
    await refused(
        _body(train, golden, training={"job_type": "bi_encoder", "dataset": "nope"}),
        "training.dataset",
        "no dataset",
    )
    await refused(
        _body(train, golden, training={"job_type": "bi_encoder", "dataset_version_id": train,
                                       "hyperparameters": {"max_stpes": 5}}),
        "max_stpes", "max_steps",
    )  # fmt: skip

    member = await world.call("member", "POST", f"{PROJECT}/pipelines", json=_body(train, golden))
    assert member.status_code == 403 and "may not promote" in member.json()["message"]
    assert (
        await world.call("viewer", "POST", f"{PROJECT}/pipelines", json=_body(train, golden))
    ).status_code == 403
    assert (await world.call("outsider", "GET", f"{PROJECT}/pipelines")).status_code == 404

    pipeline = await _pipeline(world, _body(train, golden))
    assert pipeline["owner_id"] == world.users["owner"] and pipeline["status"] == "active"
    assert pipeline["next_cron_tick"].endswith("03:00:00Z") or "T03:00:00" in pipeline["next_cron_tick"]
    again = await world.call("owner", "POST", f"{PROJECT}/pipelines", json=_body(train, golden))
    assert again.status_code == 409

    url = f"/api/v1/pipelines/{pipeline['id']}"
    changed = await world.call(
        "maintainer", "PATCH", url, json={"require_approval": True, "approver_role": "owner"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["require_approval"] and changed.json()["approver_role"] == "owner"
    bad = await world.call("maintainer", "PATCH", url, json={"rollout": {"canary_percent": 100}})
    assert bad.status_code == 422
    for field in ("owner_id", "description", "training"):
        nulled = await world.call("maintainer", "PATCH", url, json={field: None})
        assert nulled.status_code == 422 and "may not be null" in nulled.text, nulled.text
    # a member may not change what a pipeline promotes in another's name, nor hand it to a member
    member = await world.call("member", "PATCH", url, json={"gate": None, "owner_id": world.users["owner"]})
    assert member.status_code == 403
    to_member = await world.call("owner", "PATCH", url, json={"owner_id": world.users["member"]})
    assert to_member.status_code == 403 and "that member's role (member)" in to_member.json()["message"]
    paused = await world.call("maintainer", "POST", f"{url}/pause")
    assert paused.json()["status"] == "paused" and paused.json()["next_cron_tick"] is None
    assert (await world.call("maintainer", "POST", f"{url}/resume")).json()["status"] == "active"
    listed = await world.call("viewer", "GET", f"{PROJECT}/pipelines")
    assert [p["name"] for p in listed.json()] == ["nightly"]
    assert (await world.call("viewer", "DELETE", url)).status_code == 403
    assert (await world.call("owner", "DELETE", url)).status_code == 204
    assert (await world.call("owner", "GET", url)).status_code == 404
    assert world.sessionmaker is not None
    assert await _audit(world.sessionmaker, pipeline["id"]) == [
        "pipeline.create", "pipeline.update", "pipeline.pause", "pipeline.resume", "pipeline.delete",
    ]  # fmt: skip


async def test_one_tick_fires_one_run_however_many_controllers_and_missed_ticks_fire_once(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden, triggers={"cron": "*/5 * * * *"}))
    created = dt.datetime.fromisoformat(pipeline["created_at"])
    async with api_resources(settings) as one, api_resources(settings) as two:
        now = created + dt.timedelta(minutes=12)
        fired = await asyncio.gather(*(controller.schedule(r, now) for r in (one, two, one, two)))
        assert sum(len(runs) for runs in fired) == 1
        # the next tick while the first run is going: consumed by a skipped run that says why
        [skipped] = await controller.schedule(two, now + dt.timedelta(minutes=5))
        assert (
            skipped.status == "skipped"
            and skipped.outcome == "skipped: run #1 of this pipeline was still going"
        )
        assert await controller.schedule(one, now + dt.timedelta(minutes=5)) == []
        # everything down for an hour: twelve ticks missed, one run on recovery
        later = await controller.schedule(one, now + dt.timedelta(minutes=65))
        assert len(later) == 1
        await world.call("owner", "POST", f"/api/v1/pipelines/{pipeline['id']}/pause")
        assert await controller.schedule(one, now + dt.timedelta(minutes=70)) == []
    async with sessionmaker() as session:
        runs = (await session.execute(select(PipelineRun).order_by(PipelineRun.number))).scalars().all()
        count = len(runs)
    ticks = [dt.datetime.fromisoformat(run.trigger_key.removeprefix("cron:")) for run in runs]
    for tick, moment in zip(ticks, (12, 17, 77), strict=True):  # each key names the latest tick then
        at = now_of(created, moment)
        assert tick.minute % 5 == 0 and at - dt.timedelta(minutes=5) < tick <= at
    assert count == 3


def now_of(created: dt.datetime, minutes: int) -> dt.datetime:
    return created + dt.timedelta(minutes=minutes)


async def test_a_run_over_the_budget_is_skipped_with_the_reason(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    await world.call("owner", "PATCH", PROJECT, json={"budget": {"cpu_hours": 0.5}})
    await _hook(world, "budget.exhausted", "run.started", "run.finished")
    body = _body(train, golden, triggers={})
    body["training"]["compute_limit_hours"] = 2
    pipeline = await _pipeline(world, body)
    started = await world.call(
        "member", "POST", f"/api/v1/pipelines/{pipeline['id']}/run", json={"note": "try"}
    )
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["status"] == "running" and run["step"] == "train" and run["trigger"] == "manual"
    overlap = await world.call("member", "POST", f"/api/v1/pipelines/{pipeline['id']}/run")
    assert overlap.status_code == 409 and "one at a time" in overlap.json()["message"]
    async with api_resources(settings) as resources:
        assert await controller.advance(resources, uuid.UUID(run["id"]))
    ended = await _run(sessionmaker, run["id"])
    assert ended.status == "skipped"
    assert ended.outcome is not None and "would exceed the compute budget" in ended.outcome
    [said] = await _deliveries(sessionmaker, "budget.exhausted")
    assert said["data"]["run_id"] == run["id"]
    assert len(await _deliveries(sessionmaker, "run.started")) == 1
    assert (await _deliveries(sessionmaker, "run.finished"))[0]["data"]["status"] == "skipped"


async def _evaluated(
    sessionmaker: async_sessionmaker[AsyncSession], project: str, version: str, golden: str, ndcg: float
) -> str:
    """An evaluate job ended as the trainer ends one: its result holds the metrics and baselines."""
    job_id = uuid.uuid4()
    async with sessionmaker() as session:
        session.add(
            TrainingJob(
                id=job_id,
                project_id=uuid.UUID(project),
                job_type="evaluate",
                dataset_version_id=uuid.UUID(golden),
                input_model_version_id=uuid.UUID(version),
                status=JobStatus.succeeded.value,
                result={"metrics": {"ndcg@10": ndcg}, "baselines": {"bm25": {"ndcg@10": 0.6}}},
            )
        )
        await session.commit()
    return str(job_id)


async def _versions(world: World, sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[str, str, str]:
    """(project id, production version, candidate version): production promoted."""
    project = world.projects["search-a"]["id"]
    production = await add_version(sessionmaker, project, number=1)
    candidate = await add_version(sessionmaker, project, number=2)
    promoted = await world.call("owner", "POST", f"/api/v1/model-versions/{production}/promote")
    assert promoted.status_code == 200, promoted.text
    return project, production, candidate


async def test_the_gate_refuses_with_a_reason_a_person_can_read_and_a_task_for_the_owner(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    await _hook(world, "gate.refused")
    pipeline = await _pipeline(world, _body(train, golden))
    project, production, candidate = await _versions(world, sessionmaker)
    jobs = {
        "candidate": await _evaluated(sessionmaker, project, candidate, golden, 0.712),
        "production": await _evaluated(sessionmaker, project, production, golden, 0.731),
    }
    run_id = await add_run(
        sessionmaker, pipeline, step="gate",
        links={"candidate_version_id": candidate, "production_version_id": production, "gate_job_ids": jobs},
    )  # fmt: skip
    async with api_resources(settings) as resources:
        await controller.advance(resources, uuid.UUID(run_id))
    read = (await world.call("viewer", "GET", f"/api/v1/pipeline-runs/{run_id}")).json()
    reason = "refused at gate: ndcg@10 0.712 < production 0.731 - 0.005 (= 0.726)"
    assert read["status"] == "refused" and read["outcome"] == reason
    assert read["gate"]["passed"] is False and read["gate"]["checks"][0]["production"] == 0.731
    assert read["steps"][-1]["name"] == "gate" and read["steps"][-1]["status"] == "failed"
    tasks = (await world.call("owner", "GET", f"{PROJECT}/tasks")).json()["items"]
    [task] = [t for t in tasks if "Gate refused" in t["title"]]
    assert task["assignee_id"] == world.users["owner"] and reason in task["description"]
    assert task["model_version_id"] == candidate and task["labels"] == ["pipeline"]
    assert await _audit(sessionmaker, run_id) == ["pipeline_run.gate", "pipeline_run.finish"]
    [said] = await _deliveries(sessionmaker, "gate.refused")
    assert said["data"]["reason"] == reason
    # the deployment is untouched
    deployed = (await world.call("owner", "GET", f"{PROJECT}/deployments")).json()
    assert [d["model_version_id"] for d in deployed] == [production]


async def test_a_run_that_needs_approval_waits_for_the_least_busy_approver(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden, require_approval=True))
    _, production, candidate = await _versions(world, sessionmaker)
    # the owner has more open work than the maintainer: the maintainer gets the task
    made = await world.call("owner", "POST", f"{PROJECT}/tasks", json={"title": "busy", "estimate_hours": 8,
                                                                      "assignee_id": world.users["owner"]})  # fmt: skip
    assert made.status_code == 201, made.text
    links = {"candidate_version_id": candidate, "production_version_id": production}
    run_id = await add_run(sessionmaker, pipeline, step="approve", links=links)
    async with api_resources(settings) as resources:
        await controller.advance(resources, uuid.UUID(run_id))
        waiting = await _run(sessionmaker, run_id)
        assert waiting.status == "awaiting_approval"
        task_id = waiting.links["approval_task_id"]
        task = (await world.call("maintainer", "GET", f"/api/v1/tasks/{task_id}")).json()
        assert task["assignee_id"] == world.users["maintainer"] and task["priority"] == "high"
        assert f"/pipeline-runs/{run_id}/approve" in task["description"]
        await controller.advance(resources, uuid.UUID(run_id))
        assert (await _run(sessionmaker, run_id)).status == "awaiting_approval"
        refused = await world.call("member", "POST", f"/api/v1/pipeline-runs/{run_id}/approve")
        assert refused.status_code == 403 and "maintainer or above" in refused.json()["message"]
        for status in ("in_progress", "in_review", "done"):  # a member closing the task approves nothing
            moved = await world.call("member", "PATCH", f"/api/v1/tasks/{task_id}", json={"status": status})
            assert moved.status_code == 200, moved.text
        await controller.advance(resources, uuid.UUID(run_id))
        still = await _run(sessionmaker, run_id)
        assert still.status == "awaiting_approval" and "may not approve" in (still.steps[-1]["detail"] or "")
        for status in ("in_progress", "in_review", "done"):  # the maintainer reopens it and works it to done
            moved = await world.call(
                "maintainer", "PATCH", f"/api/v1/tasks/{task_id}", json={"status": status}
            )
            assert moved.status_code == 200, moved.text
        await controller.advance(resources, uuid.UUID(run_id))
    going = await _run(sessionmaker, run_id)
    assert going.status == "canary" and going.step == "judge" and going.canary_started_at is not None
    assert going.decided_by == uuid.UUID(world.users["maintainer"])
    deployed = (await world.call("owner", "GET", f"{PROJECT}/deployments")).json()
    assert deployed[0]["model_version_id"] == production
    assert deployed[0]["canary_model_version_id"] == candidate and deployed[0]["canary_percent"] == 50
    assert [s["name"] for s in going.steps] == ["approve", "canary", "judge"]


async def test_a_person_may_reject_a_waiting_run(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden, require_approval=True))
    _, production, candidate = await _versions(world, sessionmaker)
    links = {"candidate_version_id": candidate, "production_version_id": production}
    run_id = await add_run(sessionmaker, pipeline, step="approve", links=links)
    async with api_resources(settings) as resources:
        await controller.advance(resources, uuid.UUID(run_id))
    rejected = await world.call(
        "maintainer", "POST", f"/api/v1/pipeline-runs/{run_id}/reject", json={"reason": "not before the sale"}
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "refused"
    assert rejected.json()["outcome"].endswith("not before the sale")
    assert rejected.json()["decided_by"] == world.users["maintainer"]
    again = await world.call("maintainer", "POST", f"/api/v1/pipeline-runs/{run_id}/approve")
    assert again.status_code == 409
    task = (
        await world.call("owner", "GET", f"/api/v1/tasks/{rejected.json()['links']['approval_task_id']}")
    ).json()
    assert task["status"] == "done"
    # the run's event stream: an ended run is sent once, and the stream ends
    streamed = await world.call("viewer", "GET", f"/api/v1/pipeline-runs/{run_id}/events")
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    [event] = [block for block in streamed.text.split("\n\n") if block]
    assert event.startswith("event: run\ndata: ")
    assert json.loads(event.split("data: ", 1)[1])["status"] == "refused"
    listed = await world.call("viewer", "GET", f"{PROJECT}/pipeline-runs", params={"status": "refused"})
    assert [r["id"] for r in listed.json()["items"]] == [run_id]
    running = await world.call("viewer", "GET", f"{PROJECT}/pipeline-runs", params={"status": "running"})
    assert running.json()["items"] == []


async def _traffic(
    sessionmaker: async_sessionmaker[AsyncSession], project: str, version: str, requests: int, clicked: int
) -> None:
    """``requests`` answered by the version ten minutes ago, ``clicked`` of them clicked twice in the top 3."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    shown = [f"p{i}" for i in range(10)]
    prefix = uuid.uuid4().hex[:8]
    impressions = [
        {"project_id": uuid.UUID(project), "request_id": f"{prefix}-{n}", "endpoint": "recommend",
         "model_version_id": uuid.UUID(version), "product_ids": shown, "latency_ms": 10.0, "served_at": at}
        for n in range(requests)
    ]  # fmt: skip
    events = [
        {
            "project_id": uuid.UUID(project),
            "request_id": f"{prefix}-{n}",
            "event_type": "click",
            "product_id": p,
        }
        for n in range(clicked)
        for p in ("p0", "p2")
    ]
    async with sessionmaker() as session:
        await session.execute(insert(Impression), impressions)
        if events:
            await session.execute(insert(Event), events)
        await session.commit()


async def _canary_run(
    world: World, sessionmaker: async_sessionmaker[AsyncSession], pipeline: dict[str, Any]
) -> tuple[str, str, str, str]:
    project, production, candidate = await _versions(world, sessionmaker)
    canary = await world.call(
        "owner", "POST", f"/api/v1/model-versions/{candidate}/promote", json={"canary_percent": 50}
    )
    assert canary.status_code == 200, canary.text
    links = {"candidate_version_id": candidate, "production_version_id": production}
    run_id = await add_run(
        sessionmaker, pipeline, step="judge", links=links, status=RunStatus.canary,
        canary_started_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20),
    )  # fmt: skip
    return project, production, candidate, run_id


async def test_the_judge_promotes_a_canary_shoppers_click_more(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    await _hook(world, "model.promoted", "run.finished")
    pipeline = await _pipeline(world, _body(train, golden))
    project, production, candidate, run_id = await _canary_run(world, sessionmaker, pipeline)
    async with api_resources(settings) as resources:
        await _traffic(sessionmaker, project, candidate, 60, 30)
        await _traffic(sessionmaker, project, production, 60, 20)
        await controller.advance(resources, uuid.UUID(run_id))  # 60 requests per arm: not yet
        waiting = await _run(sessionmaker, run_id)
        assert waiting.status == "canary" and waiting.judge is not None
        assert (
            waiting.judge["looks"] == []
            and "waiting for 100 requests per arm" in waiting.judge["latest"]["reason"]
        )
        await _traffic(sessionmaker, project, candidate, 140, 110)
        await _traffic(sessionmaker, project, production, 140, 40)
        await controller.advance(resources, uuid.UUID(run_id))
    read = (await world.call("viewer", "GET", f"/api/v1/pipeline-runs/{run_id}")).json()
    assert read["status"] == "promoted", read
    [look] = read["judge"]["looks"]
    assert look["candidate"] == {
        "requests": 200,
        "count": 280,
        "rate": 1.4,
        "latency_p99_ms": look["candidate"]["latency_p99_ms"],
    }
    assert look["primary"]["count"] == 120 and look["p_better"] < 0.05
    assert read["outcome"].startswith(
        f"promoted model version {candidate}: CTR@10 1.4000 (canary, 200 requests)"
    )
    deployed = (await world.call("owner", "GET", f"{PROJECT}/deployments")).json()
    assert deployed[0]["model_version_id"] == candidate and deployed[0]["canary_model_version_id"] is None
    assert await _audit(sessionmaker, run_id) == [
        "pipeline_run.judge",
        "pipeline_run.promote",
        "pipeline_run.finish",
    ]
    [said] = await _deliveries(sessionmaker, "model.promoted")
    assert said["data"]["model_version_id"] == candidate
    assert (await _deliveries(sessionmaker, "run.finished"))[0]["data"]["status"] == "promoted"


async def test_the_judge_rolls_back_a_canary_shoppers_click_less_and_production_keeps_serving(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden))
    project, production, candidate, run_id = await _canary_run(world, sessionmaker, pipeline)
    await _traffic(sessionmaker, project, candidate, 200, 30)
    await _traffic(sessionmaker, project, production, 200, 120)
    async with api_resources(settings) as resources:
        await controller.advance(resources, uuid.UUID(run_id))
    ended = await _run(sessionmaker, run_id)
    assert ended.status == "rolled_back" and ended.outcome is not None and "worse" in ended.outcome
    deployed = (await world.call("owner", "GET", f"{PROJECT}/deployments")).json()
    assert deployed[0]["model_version_id"] == production and deployed[0]["canary_model_version_id"] is None
    version = (await world.call("owner", "GET", f"/api/v1/model-versions/{candidate}")).json()
    assert version["status"] == "candidate"
    tasks = (await world.call("owner", "GET", f"{PROJECT}/tasks")).json()["items"]
    assert any("rolled back" in t["title"] and t["assignee_id"] == world.users["owner"] for t in tasks)


async def test_a_canary_changed_by_hand_ends_the_run_and_cancel_takes_a_canary_down(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    pipeline = await _pipeline(world, _body(train, golden))
    _, production, candidate, run_id = await _canary_run(world, sessionmaker, pipeline)
    member = await world.call("member", "POST", f"/api/v1/pipeline-runs/{run_id}/cancel")
    assert member.status_code == 403  # taking a canary down is a promotion
    cancelled = await world.call("maintainer", "POST", f"/api/v1/pipeline-runs/{run_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["outcome"] == f"cancelled by user {world.users['maintainer']}"
    deployed = (await world.call("owner", "GET", f"{PROJECT}/deployments")).json()
    assert deployed[0]["model_version_id"] == production and deployed[0]["canary_model_version_id"] is None
    # a canary that a person replaces by hand: the judge's run ends, saying so
    again = await world.call(
        "owner", "POST", f"/api/v1/model-versions/{candidate}/promote", json={"canary_percent": 50}
    )
    assert again.status_code == 200, again.text
    links = {"candidate_version_id": candidate, "production_version_id": production}
    second = await add_run(
        sessionmaker, pipeline, step="judge", links=links, status=RunStatus.canary, number=2,
        canary_started_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    by_hand = await world.call("owner", "POST", f"/api/v1/model-versions/{production}/promote")
    assert by_hand.status_code == 200
    async with api_resources(settings) as resources:
        await controller.advance(resources, uuid.UUID(second))
    ended = await _run(sessionmaker, second)
    assert ended.status == "cancelled" and ended.outcome is not None and "changed by hand" in ended.outcome


async def test_a_new_dataset_version_and_enough_new_events_each_start_one_run(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    body = _body(train, golden, triggers={"dataset": "judgments", "min_new_events": 3})
    await _pipeline(world, body)
    async with api_resources(settings) as resources:
        assert await controller.schedule(resources) == []  # the version it was saved with is not new
        shop, more, _ = small_shop()
        newer = await import_named(world, "judgments", more.replace(",3\n", ",2\n"), "relevance")
        [run] = await controller.schedule(resources)
        assert run.trigger == "dataset" and run.trigger_key == f"dataset:{newer['version_id']}"
        assert await controller.schedule(resources) == []  # that version fires once
        project = world.projects["search-a"]["id"]
        async with sessionmaker() as session:
            await session.execute(
                insert(Event),
                [
                    {"project_id": uuid.UUID(project), "event_type": "click", "product_id": f"p{n}"}
                    for n in range(3)
                ],
            )
            await session.commit()
        # three new events, but run 1 is still going: they wait for it, and fire once it has ended
        assert await controller.schedule(resources) == []
        ended = await world.call("owner", "POST", f"/api/v1/pipeline-runs/{run.id}/cancel")
        assert ended.status_code == 200, ended.text
        [second] = await controller.schedule(resources)
        assert second.trigger == "events" and second.status == "running"
        assert second.trigger_key == f"events:{run.id}"
        assert await controller.schedule(resources) == []
    del shop


async def test_a_ctr_drop_of_the_production_version_starts_a_run(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    drop = {"percent": 20, "baseline_days": 2, "window_hours": 24, "k": 10, "min_requests": 50}
    pipeline = await _pipeline(world, _body(train, golden, triggers={"ctr_drop": drop}))
    project, production, _ = await _versions(world, sessionmaker)
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker() as session:  # in production for five days
        await session.execute(
            update(Deployment)
            .where(Deployment.is_active.is_(True))
            .values(created_at=now - dt.timedelta(days=5))
        )
        await session.commit()

    async def served(days_ago: float, requests: int, clicked: int) -> None:
        at = now - dt.timedelta(days=days_ago)
        prefix = uuid.uuid4().hex[:8]
        async with sessionmaker() as session:
            await session.execute(
                insert(Impression),
                [{"project_id": uuid.UUID(project), "request_id": f"{prefix}-{n}", "endpoint": "recommend",
                  "model_version_id": uuid.UUID(production), "product_ids": ["p0", "p1"], "latency_ms": 5.0,
                  "served_at": at} for n in range(requests)],
            )  # fmt: skip
            await session.execute(
                insert(Event),
                [{"project_id": uuid.UUID(project), "request_id": f"{prefix}-{n}", "event_type": "click",
                  "product_id": "p0"} for n in range(clicked)],
            )  # fmt: skip
            await session.commit()

    async with api_resources(settings) as resources:
        await served(4.5, 100, 50)  # its first days: CTR@10 0.5
        await served(10 / 1440, 100, 45)  # ten minutes ago: 0.45, a 10% drop
        assert await controller.schedule(resources) == []
        await served(5 / 1440, 100, 20)  # the last day now 0.325: a 35% drop
        [run] = await controller.schedule(resources)
        assert run.trigger == "ctr_drop" and run.trigger_key.startswith(f"ctr_drop:{production}:")
        read = (await world.call("viewer", "GET", f"/api/v1/pipeline-runs/{run.id}")).json()
        assert "35.0% below 0.5000" in read["steps"][0]["detail"]
        assert await controller.schedule(resources) == []  # once a day at most
    del pipeline


async def test_a_pipeline_of_a_milestone_adds_each_run_to_its_progress(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    train, golden = await _data(world)
    milestone = await world.call("owner", "POST", f"{PROJECT}/milestones", json={"title": "Fresh models"})
    assert milestone.status_code == 201, milestone.text
    body = _body(train, golden, triggers={}, milestone_id=milestone.json()["id"])
    pipeline = await _pipeline(world, body)
    started = await world.call("owner", "POST", f"/api/v1/pipelines/{pipeline['id']}/run")
    run = started.json()
    task_id = run["links"]["progress_task_id"]
    task = (await world.call("owner", "GET", f"/api/v1/tasks/{task_id}")).json()
    assert task["milestone_id"] == milestone.json()["id"] and task["status"] == "in_progress"
    assert task["title"] == "nightly run #1"
    cancelled = await world.call("owner", "POST", f"/api/v1/pipeline-runs/{run['id']}/cancel")
    assert cancelled.status_code == 200
    task = (await world.call("owner", "GET", f"/api/v1/tasks/{task_id}")).json()
    assert task["status"] == "done" and "cancelled by user" in task["description"]
    del settings, sessionmaker
