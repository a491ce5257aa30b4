"""A run changes its job only while the job is still its own (same worker, same attempt), and a run
whose heartbeat cannot reach the database retries, then stops before another worker could take over."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from arq.connections import create_pool
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.reaper import reap_stale_jobs
from services.trainer.store import Claimed, JobStore, NewVersion
from shared.config import Settings
from shared.jobs import redis_settings
from shared.models import ModelVersion, Project, TrainingJob
from shared.models.enums import JobStatus
from tests.support.data import shop_data
from tests.support.faults import TcpProxy
from tests.support.training import PROJECT as P
from tests.support.training import make_worker, run_worker, upload
from tests.support.world import World

LONG = {"epochs": 100, "max_steps": 3000, "batch_size": 4, "max_length": 24}


async def _project_with_data(w: World) -> str:
    await w.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    catalog, judgments = shop_data()
    await upload(w, "catalog.csv", catalog, "catalog")
    return await upload(w, "judgments.csv", judgments, "relevance")


async def _submit(w: World, body: dict[str, object]) -> str:
    response = await w.call("member", "POST", f"{P}/training-jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _row(sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> TrainingJob:
    async with sessionmaker() as session:
        job = await session.get(TrainingJob, uuid.UUID(job_id))
        assert job is not None
        return job


async def _versions(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(ModelVersion))).scalar_one())


async def _wait_for(sessionmaker: async_sessionmaker[AsyncSession], job_id: str, step: int) -> TrainingJob:
    for _ in range(600):
        job = await _row(sessionmaker, job_id)
        if job.status == "running" and job.progress.get("step", 0) >= step:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"the job did not reach step {step}")


async def test_a_superseded_run_changes_nothing(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await _submit(
        world, {"job_type": "bi_encoder", "dataset_version_id": await _project_with_data(world)}
    )
    store = JobStore(sessionmaker)
    first = await store.claim(uuid.UUID(job_id), "worker:1", 5)
    assert isinstance(first, Claimed)
    async with sessionmaker() as session:  # as the reaper does once the run went silent
        await session.execute(update(TrainingJob).values(status="queued", worker_id=None))
        await session.commit()
    # the same worker process takes the job again: only the attempt tells the two runs apart
    second = await store.claim(uuid.UUID(job_id), "worker:1", 5)
    assert isinstance(second, Claimed) and second.attempt == first.attempt + 1
    async with sessionmaker() as session:
        used_before = (await session.execute(select(Project.used_cpu_hours))).scalars().all()

    new = NewVersion(uuid.uuid4(), {}, {}, {}, {}, {}, {}, {}, 1.0, 1)
    assert not await store.set_device(first, "cpu")
    assert not (await store.heartbeat(first, {"step": 99}, 10.0, 3600.0, gpu=False)).owned
    assert not await store.finish(first, JobStatus.cancelled)
    assert not await store.hand_back(first, "stopping")
    assert not await store.register(first, new)

    job = await _row(sessionmaker, job_id)
    assert (job.status, job.worker_id, job.attempts) == ("running", "worker:1", second.attempt)
    assert job.progress.get("step") is None and job.compute_seconds == 0
    assert await _versions(sessionmaker) == 0
    async with sessionmaker() as session:
        assert (await session.execute(select(Project.used_cpu_hours))).scalars().all() == used_before
    assert await store.finish(second, JobStatus.failed, error="the run that owns it ends it")


async def test_a_run_taken_over_stops_and_leaves_the_new_runs_checkpoint(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    job_id = await _submit(
        world,
        {
            "job_type": "bi_encoder",
            "dataset_version_id": version,
            "base_model": str(tiny_model),
            "hyperparameters": LONG,
        },
    )
    worker = asyncio.create_task(run_worker(make_worker(settings)))
    await _wait_for(sessionmaker, job_id, step=3)
    async with sessionmaker() as session:  # another worker took the job over (its row, its checkpoint)
        await session.execute(
            update(TrainingJob).values(worker_id="taker:1", attempts=TrainingJob.attempts + 1)
        )
        await session.commit()
    marker = settings.jobs_dir / job_id / "checkpoint" / "state.pt"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"the taker's checkpoint")
    await asyncio.wait_for(worker, timeout=60)  # the old run stops at its next heartbeat

    job = await _row(sessionmaker, job_id)
    assert (job.status, job.worker_id) == ("running", "taker:1")
    assert marker.read_bytes() == b"the taker's checkpoint"
    assert await _versions(sessionmaker) == 0
    assert not any((settings.artifacts_dir / world.projects["search-a"]["id"]).glob("*/model.onnx"))


def _through(proxy: TcpProxy, settings: Settings) -> str:
    url = make_url(settings.resolved_database_url()).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


async def test_a_failed_heartbeat_is_tried_again(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    job_id = await _submit(
        world,
        {
            "job_type": "bi_encoder",
            "dataset_version_id": version,
            "base_model": str(tiny_model),
            "hyperparameters": LONG,
        },
    )
    db = make_url(settings.resolved_database_url())
    async with TcpProxy(db.host or "127.0.0.1", db.port or 5432) as proxy:
        worker = asyncio.create_task(
            run_worker(make_worker(settings, database_url=_through(proxy, settings)))
        )
        await _wait_for(sessionmaker, job_id, step=3)
        proxy.cut()  # the worker's database goes away for a few beats (0.2 s apart), not for long
        await asyncio.sleep(1.5)
        proxy.restore()
        async with sessionmaker() as session:
            restored = (await session.execute(text("SELECT now()"))).scalar_one()
        for _ in range(100):
            job = await _row(sessionmaker, job_id)
            if job.heartbeat_at is not None and job.heartbeat_at > restored:
                break
            await asyncio.sleep(0.1)
        assert job.heartbeat_at is not None and job.heartbeat_at > restored, "the heartbeat did not come back"
        assert job.status == "running" and job.worker_id is not None
        cancel = await world.call("member", "POST", f"/api/v1/training-jobs/{job_id}/cancel")
        assert cancel.status_code == 202
        await asyncio.wait_for(worker, timeout=60)
    assert (await _row(sessionmaker, job_id)).status == "cancelled"


async def test_a_run_that_cannot_reach_the_database_stops_before_it_could_be_taken_over(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    """With heartbeats presumed dead after 5 s, the run gives up after 2.5 s without one: it trains no
    further and registers nothing; once the database is back the reaper queues the job to resume."""
    version = await _project_with_data(world)
    endless = {**LONG, "epochs": 100, "max_steps": 100_000}
    job_id = await _submit(
        world,
        {
            "job_type": "bi_encoder",
            "dataset_version_id": version,
            "base_model": str(tiny_model),
            "hyperparameters": endless,
        },
    )
    db = make_url(settings.resolved_database_url())
    quick = settings.model_copy(update={"job_heartbeat_timeout_s": 5.0})
    async with TcpProxy(db.host or "127.0.0.1", db.port or 5432) as proxy:
        worker = make_worker(quick, database_url=_through(proxy, settings))
        running = asyncio.create_task(run_worker(worker))
        await _wait_for(sessionmaker, job_id, step=3)
        proxy.cut()
        # the run stops (so the burst worker ends) well before its 100,000 steps could
        await asyncio.wait_for(running, timeout=20)
        proxy.restore()
    job = await _row(sessionmaker, job_id)
    assert job.status == "running" and job.progress["step"] < 100_000
    assert await _versions(sessionmaker) == 0
    await asyncio.sleep(5.5)  # its heartbeat is now older than job_heartbeat_timeout_s
    redis = await create_pool(redis_settings(quick))
    try:
        reaped = await reap_stale_jobs(quick, JobStore(sessionmaker), redis)
    finally:
        await redis.aclose()
    assert reaped["requeued"] == 1
    job = await _row(sessionmaker, job_id)
    assert job.status == "queued" and "resuming" in (job.error or "")
