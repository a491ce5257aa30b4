"""The training-job API: submission rules, budget, idempotency, priorities, cancel, retry, events."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.jobs import arq_job_id, progress_channel
from shared.models import Project, TrainingJob
from tests.factories import create_model_version
from tests.support.data import CATALOG_CSV, relevance_csv
from tests.support.world import World, bearer

P = "/api/v1/projects/search-a"


async def _dataset(w: World, csv: str, kind: str, name: str | None = None) -> str:
    data = {"kind": kind, **({"name": name} if name else {})}
    response = await w.call(
        "member",
        "POST",
        f"{P}/datasets",
        files=[("file", (f"{kind}.csv", io.BytesIO(csv.encode())))],
        data=data,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["version_id"])


async def _budget(w: World, cpu_hours: float) -> None:
    response = await w.call("owner", "PATCH", P, json={"budget": {"cpu_hours": cpu_hours, "gpu_hours": 0}})
    assert response.status_code == 200, response.text


async def _ready(w: World, cpu_hours: float = 10) -> str:
    await _dataset(w, CATALOG_CSV, "catalog")
    version = await _dataset(w, relevance_csv(), "relevance")
    await _budget(w, cpu_hours)
    return version


def _body(version: str, **extra: Any) -> dict[str, Any]:
    return {"job_type": "bi_encoder", "dataset_version_id": version, **extra}


async def _queue_scores(settings: Settings) -> dict[str, float]:
    redis = Redis.from_url(settings.resolved_redis_url())
    try:
        entries = await redis.zrange(settings.queue_name, 0, -1, withscores=True)
    finally:
        await redis.aclose()
    return {key.decode(): score for key, score in entries}


async def _job_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(TrainingJob))).scalar_one())


async def test_submit_queues_after_commit(world: World, settings: Settings) -> None:
    version = await _ready(world)
    response = await world.call(
        "member",
        "POST",
        f"{P}/training-jobs",
        json=_body(version, hyperparameters={"max_steps": 5, "batch_size": 8}),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert job["hyperparameters"]["max_steps"] == 5 and job["hyperparameters"]["epochs"] == 1
    assert arq_job_id(uuid.UUID(job["id"])) in await _queue_scores(settings)
    read = await world.call("viewer", "GET", f"/api/v1/training-jobs/{job['id']}")
    assert read.status_code == 200 and read.json()["id"] == job["id"]
    listing = await world.call("viewer", "GET", f"{P}/training-jobs?status=queued")
    assert [j["id"] for j in listing.json()["items"]] == [job["id"]]
    assert (await world.call("owner_b", "GET", f"/api/v1/training-jobs/{job['id']}")).status_code == 404


async def test_invalid_submissions_write_nothing(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _ready(world)
    catalog_version = (await world.call("member", "GET", f"{P}/datasets")).json()["items"]
    catalog_id = next(d["latest_version"]["id"] for d in catalog_version if d["kind"] == "catalog")
    cases = [
        (_body(version, hyperparameters={"epochs": 1, "learnig_rate": 0.1}), "learnig_rate"),
        (_body(version, hyperparameters={"batch_size": 0}), "batch_size"),
        ({"job_type": "bi_encoder"}, "dataset_version_id"),
        (_body(catalog_id), "dataset_version_id"),
        (_body(str(uuid.uuid4())), "dataset_version_id"),
        ({"job_type": "export"}, "input_model_version_id"),
        ({"job_type": "index"}, "input_model_version_id"),
        ({"job_type": "evaluate", "input_model_version_id": str(uuid.uuid4())}, "dataset_version_id"),
        (
            {
                "job_type": "evaluate",
                "dataset_version_id": version,
                "input_model_version_id": str(uuid.uuid4()),
            },
            "input_model_version_id",
        ),
        ({**_body(version), "input_model_version_id": str(uuid.uuid4())}, "input_model_version_id"),
        (
            {"job_type": "export", "input_model_version_id": str(uuid.uuid4()), "base_model": "x"},
            "input_model_version_id",
        ),
        (_body(version, priority=11), "priority"),
        ({**_body(version), "job_type": "classifier"}, "dataset_version_id"),
    ]
    for body, field in cases:
        response = await world.call("member", "POST", f"{P}/training-jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in json.dumps(response.json()["detail"]), (field, response.json())
    assert await _job_rows(sessionmaker) == 0
    assert await _queue_scores(settings) == {}


async def test_an_unknown_hyperparameter_names_the_valid_ones(world: World) -> None:
    version = await _ready(world)
    body = _body(version, hyperparameters={"max_step": 5})
    response = await world.call("member", "POST", f"{P}/training-jobs", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "hyperparameters"]
    assert error["msg"] == (
        "Value error, unknown hyperparameter 'max_step' ('max_step': did you mean 'max_steps'?); the names "
        "are: adapter, batch_size, early_stopping_patience, epochs, eval_every_steps, hard_negatives, "
        "learning_rate, lora_alpha, lora_dropout, lora_r, max_length, max_steps, mixed_precision, nodes, "
        "popularity_correction, processes, query_tower_only, seed, target_modules, warmup_ratio"
    )


async def test_evaluation_steps_without_early_stopping_are_refused(world: World, settings: Settings) -> None:
    """eval_every_steps only paces early stopping: alone it would change nothing, so it is refused."""
    version = await _ready(world)
    body = _body(version, hyperparameters={"eval_every_steps": 5})
    response = await world.call("member", "POST", f"{P}/training-jobs", json=body)
    assert response.status_code == 422, response.text
    assert "early_stopping_patience" in json.dumps(response.json()["detail"])
    both = _body(version, hyperparameters={"eval_every_steps": 5, "early_stopping_patience": 2})
    assert (await world.call("member", "POST", f"{P}/training-jobs", json=both)).status_code == 202


async def test_budget_is_reserved_and_enforced(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _dataset(world, relevance_csv(), "relevance")
    await _budget(world, 0.5)
    refused = await world.call("member", "POST", f"{P}/training-jobs", json=_body(version))
    assert refused.status_code == 409 and refused.json()["error"] == "budget_exceeded"
    assert refused.json()["message"] == (
        "project 'search-a' has 0.50 of its 0.50 CPU-hours left, and this job reserves 1.00 (its "
        "compute_limit_hours). Raise the budget with `recforge projects update search-a --cpu-hours N` "
        '(or PATCH /api/v1/projects/search-a with {"budget": {"cpu_hours": N}}), or submit the job with a '
        "smaller compute_limit_hours."
    )
    await _budget(world, 1.5)
    first = await world.call(
        "member", "POST", f"{P}/training-jobs", json=_body(version, compute_limit_hours=1)
    )
    assert first.status_code == 202
    second = await world.call(
        "member", "POST", f"{P}/training-jobs", json=_body(version, compute_limit_hours=1)
    )
    assert second.status_code == 409
    assert (
        "1.50 of its 1.50 CPU-hours left, 1.00 of them held by its queued and running jobs"
        in (second.json()["message"])
    )
    small = await world.call(
        "member", "POST", f"{P}/training-jobs", json=_body(version, compute_limit_hours=0.5)
    )
    assert small.status_code == 202
    cancelled = await world.call("member", "POST", f"/api/v1/training-jobs/{first.json()['id']}/cancel")
    assert cancelled.status_code == 202  # a cancelled job no longer holds its reservation
    again = await world.call(
        "member", "POST", f"{P}/training-jobs", json=_body(version, compute_limit_hours=1)
    )
    assert again.status_code == 202
    assert await _job_rows(sessionmaker) == 3


async def test_idempotency_key_returns_the_first_job(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _ready(world)
    headers = {**world.as_("member"), "Idempotency-Key": "nightly-2026-11-28"}
    url = f"{P}/training-jobs"
    first = await world.client.post(url, json=_body(version), headers=headers)
    again = await world.client.post(url, json=_body(version), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    racing = await asyncio.gather(
        *[
            world.client.post(url, json=_body(version), headers={**headers, "Idempotency-Key": "race"})
            for _ in range(4)
        ]
    )
    assert {r.status_code for r in racing} == {202} and len({r.json()["id"] for r in racing}) == 1
    assert await _job_rows(sessionmaker) == 2
    assert len(await _queue_scores(settings)) == 2
    other = await world.client.post(url, json=_body(version, priority=9), headers=headers)
    assert other.status_code == 409 and other.json()["detail"]["job_id"] == first.json()["id"]


async def test_a_replay_matches_a_job_stored_before_a_hyperparameter_was_added(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _ready(world)
    headers = {**world.as_("member"), "Idempotency-Key": "before-the-upgrade"}
    first = await world.client.post(f"{P}/training-jobs", json=_body(version), headers=headers)
    assert first.status_code == 202, first.text
    async with sessionmaker() as session:  # as a row written by a version without eval_every_steps
        await session.execute(
            update(TrainingJob).values(hyperparameters=TrainingJob.hyperparameters - "eval_every_steps")
        )
        await session.commit()
    again = await world.client.post(f"{P}/training-jobs", json=_body(version), headers=headers)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"


async def test_higher_priority_runs_first(world: World, settings: Settings) -> None:
    version = await _ready(world)
    ids = {}
    for priority in (2, 9, 5):
        response = await world.call(
            "member",
            "POST",
            f"{P}/training-jobs",
            json=_body(version, priority=priority, compute_limit_hours=0.1),
        )
        ids[priority] = response.json()["id"]
    scores = await _queue_scores(settings)
    order = sorted(scores, key=lambda key: scores[key])
    assert order == [arq_job_id(uuid.UUID(ids[p])) for p in (9, 5, 2)]


async def test_cancel_and_retry(world: World, settings: Settings) -> None:
    version = await _ready(world)
    job = (await world.call("member", "POST", f"{P}/training-jobs", json=_body(version))).json()
    assert (
        await world.call("viewer", "POST", f"/api/v1/training-jobs/{job['id']}/cancel")
    ).status_code == 403
    queued_retry = await world.call("member", "POST", f"/api/v1/training-jobs/{job['id']}/retry")
    assert queued_retry.status_code == 409
    cancelled = await world.call("member", "POST", f"/api/v1/training-jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert (
        await world.call("member", "POST", f"/api/v1/training-jobs/{job['id']}/cancel")
    ).status_code == 409
    retried = await world.call("member", "POST", f"/api/v1/training-jobs/{job['id']}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] == "queued" and retried.json()["retries"] == 1
    assert retried.json()["finished_at"] is None
    assert arq_job_id(uuid.UUID(job["id"]), 1) in await _queue_scores(settings)
    audit = (await world.call("owner", "GET", f"{P}/audit")).json()["items"]
    assert [a["action"] for a in audit if a["entity_type"] == "training_job"] == [
        "job.retry",
        "job.cancel",
        "job.submit",
    ]


async def test_cancel_of_a_running_job_is_a_request(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _ready(world)
    job = (await world.call("member", "POST", f"{P}/training-jobs", json=_body(version))).json()
    async with sessionmaker() as session:
        await session.execute(update(TrainingJob).values(status="running", started_at=func.now()))
        await session.commit()
    response = await world.call("member", "POST", f"/api/v1/training-jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested_at"]


async def test_events_stream_follows_the_job(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _ready(world)
    job = (await world.call("member", "POST", f"{P}/training-jobs", json=_body(version))).json()
    async with sessionmaker() as session:
        await session.execute(
            update(TrainingJob).values(status="running", progress={"step": 1, "total_steps": 2})
        )
        await session.commit()
    events: list[dict[str, Any]] = []

    async def listen() -> None:
        async with world.client.stream(
            "GET", f"/api/v1/training-jobs/{job['id']}/events", headers=world.as_("viewer")
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    listener = asyncio.create_task(listen())
    redis = Redis.from_url(settings.resolved_redis_url())
    try:
        for _ in range(50):
            if events:
                break
            await asyncio.sleep(0.1)
        async with sessionmaker() as session:
            await session.execute(
                update(TrainingJob).values(status="succeeded", progress={"step": 2, "total_steps": 2})
            )
            await session.commit()
        await redis.publish(progress_channel(uuid.UUID(job["id"])), json.dumps({"status": "succeeded"}))
        await asyncio.wait_for(listener, timeout=10)
    finally:
        await redis.aclose()
    assert events[0]["status"] == "running" and events[0]["progress"]["step"] == 1
    assert events[-1]["status"] == "succeeded" and events[-1]["progress"]["step"] == 2


async def test_model_versions_are_listed_and_read(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(world.projects["search-a"]["id"]))
        assert project is not None
        for n in (1, 2, 3):
            model = await create_model_version(session, project=project, version=n)
            model.metrics = {"ndcg@10": 0.5 + n / 10}
        await session.commit()
    page = (await world.call("viewer", "GET", f"{P}/model-versions?limit=2")).json()
    assert [v["version"] for v in page["items"]] == [3, 2]
    rest = (
        await world.call("viewer", "GET", f"{P}/model-versions?limit=2&cursor={page['next_cursor']}")
    ).json()
    assert [v["version"] for v in rest["items"]] == [1]
    one = await world.call("viewer", "GET", f"/api/v1/model-versions/{page['items'][0]['id']}")
    assert one.status_code == 200 and one.json()["metrics"] == {"ndcg@10": 0.8}
    assert (
        await world.call("owner_b", "GET", f"/api/v1/model-versions/{page['items'][0]['id']}")
    ).status_code == 404


async def test_who_may_submit(world: World) -> None:
    version = await _ready(world)
    for who, expected in (("viewer", 403), ("outsider", 404), ("service", 403), ("member", 202)):
        response = await world.call(
            who, "POST", f"{P}/training-jobs", json=_body(version, compute_limit_hours=0.1)
        )
        assert response.status_code == expected, (who, response.text)


async def test_base_models_are_hub_ids_or_folders_under_the_model_roots(
    world: World, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    version = await _ready(world)
    allowed = tmp_path_factory.mktemp("models")
    (settings.data_dir / "jobs" / "someone-elses").mkdir(parents=True, exist_ok=True)
    refused = [
        "/etc",
        str(settings.data_dir / "jobs" / "someone-elses"),  # inside the data directory, under a root too
        f"{allowed}/../../..",
        "org/../../x",
        "not a hub id",
    ]
    for base_model in refused:
        response = await world.call(
            "member", "POST", f"{P}/training-jobs", json=_body(version, base_model=base_model)
        )
        assert response.status_code == 422, (base_model, response.text)
        assert "base_model" in json.dumps(response.json()["detail"]), base_model
    for base_model in (str(allowed), "sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased"):
        response = await world.call(
            "member", "POST", f"{P}/training-jobs", json=_body(version, base_model=base_model)
        )
        assert response.status_code == 202, (base_model, response.text)


async def test_event_streams_are_capped_and_end_when_the_key_is_revoked(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from asgi_lifespan import LifespanManager

    from services.api.app import create_app

    version = await _ready(world)
    job = (await world.call("member", "POST", f"{P}/training-jobs", json=_body(version))).json()
    async with sessionmaker() as session:
        await session.execute(update(TrainingJob).values(status="running"))
        await session.commit()
    viewer_key = await world.call(
        "admin", "POST", "/api/v1/keys", json={"user_id": world.users["viewer"], "name": "dashboard"}
    )
    key = viewer_key.json()
    app = create_app(settings.model_copy(update={"max_event_streams": 1}))
    url = f"/api/v1/training-jobs/{job['id']}/events"
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
            seen: list[str] = []

            async def follow() -> None:
                async with client.stream("GET", url, headers=bearer(key["key"])) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            seen.append(line[7:])

            follower = asyncio.create_task(follow())
            for _ in range(50):
                if seen:
                    break
                await asyncio.sleep(0.1)
            second = await client.get(url, headers=world.as_("member"))
            assert second.status_code == 429 and second.headers["retry-after"]
            revoked = await client.delete(f"/api/v1/keys/{key['id']}", headers=world.as_("admin"))
            assert revoked.status_code == 204
            redis = Redis.from_url(settings.resolved_redis_url())
            try:  # the next update the stream hears, it checks the key again
                await redis.publish(progress_channel(uuid.UUID(job["id"])), json.dumps({"status": "running"}))
            finally:
                await redis.aclose()
            await asyncio.wait_for(follower, timeout=10)
            assert seen[0] == "job" and seen[-1] == "end"
            async with sessionmaker() as session:  # a finished job's stream is one event long
                await session.execute(update(TrainingJob).values(status="succeeded"))
                await session.commit()
            third = await client.get(url, headers=world.as_("member"))
            assert third.status_code == 200  # the closed stream gave its place back
