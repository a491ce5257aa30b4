"""Training jobs end to end: the API, the real Redis queue, an arq worker, Postgres, the files."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.control import JobCancelled, JobControl, StopReason
from services.trainer.finetune.checkpoint import checkpoint_model
from services.trainer.jobs import export as export_job
from services.trainer.jobs.base import JobRun
from services.trainer.reaper import reap_stale_jobs
from services.trainer.store import Claimed, JobStore, LiveRuns
from shared.config import Settings
from shared.jobs import redis_settings
from shared.models import TrainingJob
from shared.models.enums import JobStatus
from tests.support.data import shop_data
from tests.support.processes import CLI, cli_env, free_port, recforge
from tests.support.training import PROJECT as P
from tests.support.training import make_worker, train, upload
from tests.support.training import run_worker as _run_worker
from tests.support.world import World


async def _project_with_data(w: World) -> str:
    await w.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    catalog, judgments = shop_data()
    await upload(w, "catalog.csv", catalog, "catalog")
    return await upload(w, "judgments.csv", judgments, "relevance")


async def test_bi_encoder_job_runs_through_the_queue(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "hyperparameters": {"epochs": 2, "batch_size": 16, "max_length": 24, "learning_rate": 1e-3},
    }
    submitted = await world.call("member", "POST", f"{P}/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    await _run_worker(make_worker(settings))

    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["compute_seconds"] > 0 and len(job["model_version_ids"]) == 1
    model = (
        await world.call("member", "GET", f"/api/v1/model-versions/{job['model_version_ids'][0]}")
    ).json()
    assert model["status"] == "candidate" and model["task_type"] == "bi_encoder" and model["version"] == 1
    assert model["dataset_version_id"] == version and model["training_job_id"] == job_id
    for key in ("ndcg@10", "mrr@10", "recall@10", "catalog_ndcg@10", "catalog_recall@100"):
        assert 0 <= model["metrics"][key] <= 1
    assert set(model["baselines"]) == {"bm25", "zero_shot"}
    assert "ndcg@10" in model["baselines"]["bm25"] and "catalog_ndcg@10" in model["baselines"]["zero_shot"]
    export = model["compute"]["export"]
    assert export["parity_max_abs_diff"] <= 1e-4 and "int8_metric_drop" in export
    timing = model["compute"]["evaluation"]
    assert timing["graph"] in ("int8", "fp32") and not timing["baselines_cached"]
    assert timing["seconds"] == pytest.approx(timing["model_seconds"] + timing["baselines_seconds"], abs=0.02)
    for name in ("model", "model_int8"):
        entry = model["artifacts"][name]
        path = settings.data_dir / entry["path"]
        assert path.exists() and path.stat().st_size == entry["bytes"]
    assert model["library_versions"]["torch"] and model["hyperparameters"]["epochs"] == 2
    project = (await world.call("member", "GET", P)).json()
    assert project["budget"]["used_cpu_hours"] > 0
    assert not (settings.jobs_dir / job_id).exists()  # checkpoints go once the job is done


async def test_zero_steps_registers_the_base_model_as_a_zero_shot_version(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    """max_steps=0 trains nothing: the version is the base model, so it scores exactly as zero-shot."""
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "hyperparameters": {"max_steps": 0, "max_length": 24},
    }
    submitted = await world.call("member", "POST", f"{P}/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    await _run_worker(make_worker(settings))
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{submitted.json()['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    model = (
        await world.call("member", "GET", f"/api/v1/model-versions/{job['model_version_ids'][0]}")
    ).json()
    zero_shot = model["baselines"]["zero_shot"]
    export = model["compute"]["export"]
    for key in ("ndcg@10", "mrr@10"):  # the fp32 graph is the base model, exported
        assert export["fp32_metrics"][key] == pytest.approx(zero_shot[key], abs=1e-4), key
    # the version's metrics are its served graph's: the int8 one within the tolerance on the headline
    graph = model["compute"]["evaluation"]["graph"]
    assert graph == ("int8" if export["int8_servable"] else "fp32")
    served = export["int8_metrics"] if graph == "int8" else export["fp32_metrics"]
    assert model["metrics"]["ndcg@10"] == served["ndcg@10"]
    assert model["metrics"]["ndcg@10"] >= zero_shot["ndcg@10"] - export["int8_tolerance"] - 1e-4
    assert "catalog_ndcg@10" in model["metrics"]
    assert model["compute"]["steps"] == 0


async def test_cancel_stops_a_running_job(world: World, settings: Settings, tiny_model: Path) -> None:
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "hyperparameters": {"epochs": 100, "batch_size": 4, "max_length": 24},
    }
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    runner = asyncio.create_task(_run_worker(make_worker(settings)))
    for _ in range(300):
        job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
        if job["progress"].get("step", 0) > 2:
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "running", job
    loop = asyncio.get_running_loop()
    asked = loop.time()
    assert (await world.call("member", "POST", f"/api/v1/training-jobs/{job_id}/cancel")).status_code == 202
    while (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()[
        "status"
    ] == "running":
        assert loop.time() - asked < 10, "cancel took more than 10 s"
        await asyncio.sleep(0.1)
    await asyncio.wait_for(runner, timeout=30)
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
    assert job["status"] == "cancelled" and job["model_version_ids"] == []
    assert not (settings.jobs_dir / job_id).exists()
    assert not any((settings.artifacts_dir / world.projects["search-a"]["id"]).glob("*/model.onnx"))


async def test_a_cancel_reaches_a_running_job_through_redis_within_3_seconds(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    """Heartbeats (which also read the cancellation from the row) come every 30 s here: only the Redis
    channel can stop the job this fast."""
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "hyperparameters": {"epochs": 100, "batch_size": 4, "max_length": 24},
    }
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    runner = asyncio.create_task(_run_worker(make_worker(settings, progress_interval_s=30.0)))
    loop = asyncio.get_running_loop()
    waited = loop.time()
    while (await _job(world, job_id))["status"] != "running":
        assert loop.time() - waited < 60, "the job did not start"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # into training
    asked = loop.time()
    assert (await world.call("member", "POST", f"/api/v1/training-jobs/{job_id}/cancel")).status_code == 202
    while (job := await _job(world, job_id))["status"] == "running":
        assert loop.time() - asked < 3, "cancel took more than 3 s"
        await asyncio.sleep(0.05)
    assert job["status"] == "cancelled" and loop.time() - asked < 3
    await asyncio.wait_for(runner, timeout=30)
    assert not (settings.jobs_dir / job_id).exists()


async def test_early_stopping_stops_when_the_validation_metric_stops_improving(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    """A learning rate far below float32's resolution leaves the weights as they are: the validation
    metric cannot improve after the first evaluation, so training stops after `patience` more."""
    version = await _project_with_data(world)
    hyperparameters = {
        "epochs": 20,
        "max_steps": 60,
        "batch_size": 8,
        "max_length": 24,
        "learning_rate": 1e-12,
        "early_stopping_patience": 2,
        "eval_every_steps": 3,
    }
    model = await _run_job(
        world,
        settings,
        {"job_type": "bi_encoder", "dataset_version_id": version, "base_model": str(tiny_model),
         "hyperparameters": hyperparameters},
    )  # fmt: skip
    stopping = model["compute"]["early_stopping"]
    assert model["compute"]["steps"] == 9 and stopping["stopped_early"] is True
    assert [e["step"] for e in stopping["evaluations"]] == [3, 6, 9]
    assert len({e["score"] for e in stopping["evaluations"]}) == 1
    assert stopping["best_step"] == 3 and stopping["metric"] == "ndcg@10" and stopping["patience"] == 2
    # the metric the model was kept for is the one its fp32 graph shows (its `metrics` are the served
    # graph's: the int8 one, when within the tolerance, may order a near tie otherwise)
    export = model["compute"]["export"]
    assert export["fp32_metrics"]["ndcg@10"] == pytest.approx(stopping["best_score"], abs=1e-5)
    assert model["metrics"]["ndcg@10"] >= stopping["best_score"] - export["int8_tolerance"] - 1e-5


async def test_reaper_requeues_a_job_whose_worker_vanished(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    version = await _project_with_data(world)
    body = {"job_type": "bi_encoder", "dataset_version_id": version}
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    async with sessionmaker() as session:
        await session.execute(
            text(
                "UPDATE training_jobs SET status = 'running', attempts = 1, worker_id = 'gone:1', "
                "heartbeat_at = now() - interval '10 minutes' WHERE id = :id"
            ),
            {"id": job_id},
        )
        await session.commit()
    from arq.connections import create_pool

    redis = await create_pool(redis_settings(settings))
    try:
        # arq keeps the dead run's result (e.g. a re-run that found the job still running) for an
        # hour; the resumption must not be refused because of it
        await redis.set(f"arq:result:training-job:{job_id}:0", b"x", ex=3600)
        await redis.delete(f"arq:job:training-job:{job_id}:0")
        result = await reap_stale_jobs(settings, JobStore(sessionmaker), redis)
        assert await redis.exists(f"arq:job:training-job:{job_id}:0:a1")
    finally:
        await redis.aclose()
    assert result["requeued"] == 1
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
    assert job["status"] == "queued" and "resuming" in job["error"]

    async with sessionmaker() as session:
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == uuid.UUID(job_id))
            .values(
                status="running",
                attempts=settings.max_job_attempts,
                heartbeat_at=text("now() - interval '1 hour'"),
            )
        )
        await session.commit()
    redis = await create_pool(redis_settings(settings))
    try:
        result = await reap_stale_jobs(settings, JobStore(sessionmaker), redis)
    finally:
        await redis.aclose()
    assert result["failed"] == 1
    assert (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()["status"] == "failed"


def _worker_process(settings: Settings, port: int) -> subprocess.Popen[str]:
    env = cli_env(
        settings,
        RECFORGE_QUEUE_NAME=settings.queue_name,
        RECFORGE_TRAINER_PORT=str(port),
        RECFORGE_CHECKPOINT_INTERVAL_S="0.5",
        RECFORGE_PROGRESS_INTERVAL_S="0.3",
        RECFORGE_JOB_HEARTBEAT_TIMEOUT_S="5",
        RECFORGE_LOG_FORMAT="console",
    )
    return subprocess.Popen(
        [*CLI, "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_killed_worker_is_resumed_from_its_checkpoint(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "hyperparameters": {"epochs": 100, "max_steps": 1500, "batch_size": 4, "max_length": 24},
    }
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    first = _worker_process(settings, free_port())
    second: subprocess.Popen[str] | None = None
    try:
        checkpoint = 0
        for _ in range(600):
            job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
            checkpoint = job["progress"].get("checkpoint_step", 0)
            if checkpoint:
                break
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            await asyncio.sleep(0.1)
        assert checkpoint > 0 and job["status"] == "running"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # the progress the API saw can lag the checkpoint on disk (they are flushed on their own clocks)
        saved = checkpoint_model(settings.jobs_dir / job_id)
        assert saved is not None
        on_disk = torch.load(saved.parent / "state.pt", weights_only=False)["step"]
        assert on_disk >= checkpoint

        second = _worker_process(settings, free_port())
        loop = asyncio.get_running_loop()
        started = loop.time()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            assert loop.time() - started < 600, job
            assert second.poll() is None, second.stderr.read() if second.stderr else ""
            await asyncio.sleep(0.5)
            job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        model = (
            await world.call("member", "GET", f"/api/v1/model-versions/{job['model_version_ids'][0]}")
        ).json()
        resumed = model["compute"]["resumed_from_step"]
        assert resumed == on_disk
        assert model["compute"]["steps"] == 1500
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def test_a_checkpoint_caught_between_its_renames_is_recovered(tmp_path: Path) -> None:
    assert checkpoint_model(tmp_path) is None
    (tmp_path / "checkpoint.old" / "model").mkdir(parents=True)
    torch.save({"step": 7}, tmp_path / "checkpoint.old" / "state.pt")
    assert checkpoint_model(tmp_path) == tmp_path / "checkpoint" / "model"
    assert not (tmp_path / "checkpoint.old").exists()


async def _run_job(w: World, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    (version,) = await train(w, settings, [body])
    return dict((await w.call("member", "GET", f"/api/v1/model-versions/{version}")).json())


async def _job(w: World, job_id: str) -> dict[str, Any]:
    return dict((await w.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json())


async def test_evaluate_export_and_index_work_on_a_version(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    model = await _run_job(
        world,
        settings,
        {
            "job_type": "bi_encoder",
            "dataset_version_id": version,
            "base_model": str(tiny_model),
            "hyperparameters": {"max_steps": 10, "batch_size": 16, "max_length": 24},
        },
    )
    on_model = {"input_model_version_id": model["id"]}
    refused = [
        ({"job_type": "export", **on_model, "dataset_version_id": version}, "dataset_version_id"),
        ({"job_type": "index", **on_model, "dataset_version_id": version}, "dataset_version_id"),
        ({"job_type": "evaluate", **on_model}, "dataset_version_id"),
    ]
    for body, field in refused:
        response = await world.call("member", "POST", f"{P}/training-jobs", json=body)
        assert response.status_code == 422 and field in response.text, response.text
    ids = {}
    for body in (
        {"job_type": "evaluate", **on_model, "dataset_version_id": version},
        {"job_type": "export", **on_model},
        {"job_type": "index", **on_model},
    ):
        response = await world.call("member", "POST", f"{P}/training-jobs", json=body)
        assert response.status_code == 202, response.text
        ids[body["job_type"]] = response.json()["id"]
    await _run_worker(make_worker(settings))
    jobs = {name: await _job(world, job_id) for name, job_id in ids.items()}
    for job in jobs.values():
        assert job["status"] == "succeeded", job["error"]
        assert job["model_version_ids"] == []  # they register nothing new

    evaluated = jobs["evaluate"]["result"]
    assert evaluated["model_version_id"] == model["id"] and evaluated["dataset_version_id"] == version
    # the served graph scores the validation split as it did when the fine-tune measured the version
    served = "model_int8" if model["artifacts"]["model_int8"]["servable"] else "model"
    assert evaluated["model_file"] == served
    assert model["compute"]["evaluation"]["graph"] == ("int8" if served == "model_int8" else "fp32")
    for key in ("ndcg@10", "catalog_ndcg@10"):
        assert abs(evaluated["metrics"][key] - model["metrics"][key]) < 1e-3, key
    assert evaluated["baselines"] == model["baselines"]  # same data, same base model: from the cache

    after = (await world.call("member", "GET", f"/api/v1/model-versions/{model['id']}")).json()
    exported = jobs["export"]["result"]
    assert exported["fp16_max_abs_diff"] is not None and exported["fp16_max_abs_diff"] < 1e-2
    assert "int8_metric_drop" in exported and exported["int8_servable"] in (True, False)
    for name in ("model_int8", "model_fp16"):
        entry = after["artifacts"][name]
        assert entry == {**exported["files"][name], "servable": entry["servable"]}
        assert (settings.data_dir / entry["path"]).stat().st_size == entry["bytes"]
    assert after["compute"]["export"]["rebuild"]["int8_preset"]

    index = jobs["index"]["result"]
    catalog_versions = (await world.call("member", "GET", f"{P}/datasets")).json()["items"]
    catalog_id = next(d["latest_version"]["id"] for d in catalog_versions if d["kind"] == "catalog")
    assert index["dataset_version_id"] == catalog_id and after["artifacts"]["catalog_index"] == index
    vectors = np.load(settings.data_dir / index["files"]["embeddings"]["path"])
    ids_table = pq.read_table(settings.data_dir / index["files"]["product_ids"]["path"])
    assert vectors.shape == (index["count"], index["dim"]) == (ids_table.num_rows, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert len(set(ids_table["product_id"].to_pylist())) == index["count"]


async def test_cross_encoder_job(world: World, settings: Settings, tiny_model: Path) -> None:
    version = await _project_with_data(world)
    model = await _run_job(
        world,
        settings,
        {
            "job_type": "cross_encoder",
            "dataset_version_id": version,
            "base_model": str(tiny_model),
            "hyperparameters": {"max_steps": 20, "batch_size": 16, "max_length": 32},
        },
    )
    assert model["task_type"] == "cross_encoder"
    assert {"ndcg@10", "mrr@10", "recall@10", "rmse"} <= set(model["metrics"])
    assert 0 < model["metrics"]["rmse"] < 2  # grades run from 1 to 3
    assert "catalog_ndcg@10" not in model["metrics"]  # a cross-encoder reranks; it does not retrieve
    assert model["baselines"]["bm25"]["ndcg@10"] > 0
    assert model["compute"]["export"]["parity_max_abs_diff"] <= 1e-4


async def test_classifier_job(world: World, settings: Settings, tiny_model: Path) -> None:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    rows = [{"text": f"where is my order number {i}", "label": "order_status"} for i in range(60)]
    rows += [{"text": f"i want my money back for item {i + 500}", "label": "refund"} for i in range(60)]
    jsonl = "\n".join(json.dumps(r) for r in rows) + "\n"
    uploaded = await world.call(
        "member",
        "POST",
        f"{P}/datasets",
        files=[("file", ("intents.jsonl", io.BytesIO(jsonl.encode())))],
        data={"kind": "labeled_text"},
    )
    assert uploaded.status_code == 201, uploaded.text
    model = await _run_job(
        world,
        settings,
        {
            "job_type": "classifier",
            "dataset_version_id": uploaded.json()["version_id"],
            "base_model": str(tiny_model),
            "hyperparameters": {"epochs": 10, "batch_size": 16, "max_length": 16, "learning_rate": 1e-3},
        },
    )
    assert model["config"]["labels"] == ["order_status", "refund"]
    assert model["metrics"]["accuracy"] > 0.9  # the two intents share no words: easy to learn
    assert set(model["metrics"]["per_class"]) == {"order_status", "refund"}
    assert set(model["baselines"]) == {"bm25", "zero_shot", "majority"}
    assert model["baselines"]["bm25"]["accuracy"] > 0.9  # the nearest training text shares the words


@pytest.mark.slow
async def test_real_minilm_fine_tunes_through_the_queue(world: World, settings: Settings) -> None:
    version = await _project_with_data(world)
    model = await _run_job(
        world,
        settings,
        {
            "job_type": "bi_encoder",
            "dataset_version_id": version,
            "hyperparameters": {"max_steps": 4, "batch_size": 8},
        },
    )
    assert model["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert model["compute"]["export"]["parity_max_abs_diff"] <= 1e-4
    assert model["compute"]["export"]["int8_mean_cosine"] > 0.95
    assert model["metrics"]["ndcg@10"] > 0 and model["baselines"]["zero_shot"]["ndcg@10"] > 0


async def test_a_project_at_its_job_limit_waits(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    await world.call("owner", "PATCH", P, json={"max_concurrent_jobs": 1})
    body = {"job_type": "bi_encoder", "dataset_version_id": version, "base_model": str(tiny_model)}
    busy = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    waiting = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    async with sessionmaker() as session:
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == uuid.UUID(busy))
            .values(status="running", worker_id="elsewhere:1", heartbeat_at=text("now()"))
        )
        await session.commit()
    worker = make_worker(settings)
    task = asyncio.create_task(worker.async_run())
    await asyncio.sleep(3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.close()
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{waiting}")).json()
    assert job["status"] == "queued" and job["attempts"] == 0
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.resolved_redis_url())
    try:
        entries = [key.decode() for key in await redis.zrange(settings.queue_name, 0, -1)]
    finally:
        await redis.aclose()
    # it waits without a timer: no entry of its own comes back to the queue every few seconds
    assert not any(waiting in key for key in entries), entries


async def test_a_waiting_job_is_woken_with_its_priority_when_a_slot_frees(
    world: World, settings: Settings, tiny_model: Path
) -> None:
    import time

    from redis.asyncio import Redis

    from shared.jobs import PRIORITY_STEP, arq_job_id

    version = await _project_with_data(world)
    await world.call("owner", "PATCH", P, json={"max_concurrent_jobs": 1})
    base = {"job_type": "bi_encoder", "dataset_version_id": version, "base_model": str(tiny_model)}
    busy = {**base, "hyperparameters": {"epochs": 100, "batch_size": 4, "max_length": 24}}
    busy_id = (await world.call("member", "POST", f"{P}/training-jobs", json=busy)).json()["id"]
    first = asyncio.create_task(_run_worker(make_worker(settings)))
    for _ in range(300):
        if (await _job(world, busy_id))["status"] == "running":
            break
        await asyncio.sleep(0.1)
    small = {**base, "priority": 9, "hyperparameters": {"max_steps": 3, "batch_size": 8, "max_length": 24}}
    waiting_id = (await world.call("member", "POST", f"{P}/training-jobs", json=small)).json()["id"]
    entry = arq_job_id(uuid.UUID(waiting_id))
    redis = Redis.from_url(settings.resolved_redis_url())
    try:
        second = make_worker(settings)  # finds the project full, and leaves the job waiting
        polling = asyncio.create_task(second.async_run())
        await asyncio.sleep(3)
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await second.close()
        assert (await _job(world, busy_id))["status"] == "running"
        assert (await _job(world, waiting_id))["status"] == "queued"
        assert await redis.zscore(settings.queue_name, entry) is None  # no timer brings it back
        cancelled = await world.call("member", "POST", f"/api/v1/training-jobs/{busy_id}/cancel")
        assert cancelled.status_code == 202
        score = None
        for _ in range(600):  # the busy job ends on the first worker, which wakes the waiting one
            score = await redis.zscore(settings.queue_name, entry)
            if score is not None or (await _job(world, waiting_id))["status"] != "queued":
                break
            await asyncio.sleep(0.02)
        # queued again under its own id with priority 9's place: ahead of anything queued since
        assert score is None or score < (time.time() - 8 * PRIORITY_STEP.total_seconds()) * 1000
        await asyncio.wait_for(first, timeout=120)
    finally:
        await redis.aclose()
    assert (await _job(world, busy_id))["status"] == "cancelled"
    assert (await _job(world, waiting_id))["status"] == "succeeded"


async def test_a_worker_never_reaps_the_runs_it_has_going_itself(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A worker whose event loop stalled sees its own run's heartbeat as old as any other's; the run is
    alive, so that worker leaves it, while a worker that is not running it takes the silence for death."""
    version = await _project_with_data(world)
    body = {"job_type": "bi_encoder", "dataset_version_id": version}
    job_id = uuid.UUID((await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"])
    async with sessionmaker() as session:
        await session.execute(
            text(
                "UPDATE training_jobs SET status = 'running', attempts = 1, worker_id = 'here:1', "
                "heartbeat_at = now() - interval '10 minutes' WHERE id = :id"
            ),
            {"id": job_id},
        )
        await session.commit()
    from arq.connections import create_pool

    store = JobStore(sessionmaker)
    redis = await create_pool(redis_settings(settings))
    try:
        mine = LiveRuns("here:1", frozenset({job_id}))
        assert (await reap_stale_jobs(settings, store, redis, mine))["requeued"] == 0
        # the same job id running in another worker does not make this row that worker's
        theirs = LiveRuns("there:2", frozenset({job_id}))
        assert (await reap_stale_jobs(settings, store, redis, theirs))["requeued"] == 1
    finally:
        await redis.aclose()
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
    assert job["status"] == "queued" and "resuming" in job["error"]


async def test_reaper_enqueues_a_queued_job_the_queue_lost(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from redis.asyncio import Redis

    from shared.jobs import arq_job_id

    version = await _project_with_data(world)
    body = {"job_type": "bi_encoder", "dataset_version_id": version}
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    arq_id = arq_job_id(uuid.UUID(job_id))
    redis = Redis.from_url(settings.resolved_redis_url())
    try:
        await redis.delete(f"arq:job:{arq_id}")
        await redis.zrem(settings.queue_name, arq_id)
        store = JobStore(sessionmaker)
        assert (await reap_stale_jobs(settings, store, redis))["re_enqueued"] == 0  # queued a moment ago
        async with sessionmaker() as session:
            await session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == uuid.UUID(job_id))
                .values(queued_at=text("now() - interval '5 minutes'"))
            )
            await session.commit()
        from arq.connections import ArqRedis

        arq_redis = ArqRedis.from_url(settings.resolved_redis_url())
        try:
            assert (await reap_stale_jobs(settings, store, arq_redis))["re_enqueued"] == 1
        finally:
            await arq_redis.aclose()
        assert await redis.zscore(settings.queue_name, arq_id) is not None
    finally:
        await redis.aclose()


async def test_cli_submits_a_job_and_follows_it(
    world: World, settings: Settings, api_server: str, tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    env = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["member"])
    args = [*CLI, "jobs", "submit", "-p", "search-a", "--type", "bi_encoder",
            "--dataset-version", version, "--base-model", str(tiny_model), "--set", "max_steps=6",
            "--set", "batch_size=8"]  # fmt: skip
    cli = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    for _ in range(100):
        if (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]:
            break
        await asyncio.sleep(0.2)
    await _run_worker(make_worker(settings))
    stdout, stderr = await asyncio.wait_for(cli.communicate(), timeout=120)
    assert cli.returncode == 0, stderr.decode()
    assert "Model version 1 (bi_encoder)" in stdout.decode()
    assert "fine-tuned" in stdout.decode() and "bm25" in stdout.decode() and "zero_shot" in stdout.decode()
    job = (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"][0]
    [warning] = job["result"]["warnings"]  # 120 queries, about a tenth of them to validate on
    assert warning.startswith("the metrics come from 10 validation queries, fewer than 20: they are mostly")
    assert f"warning: {warning}" in " ".join(stderr.decode().split())

    model_id = (await world.call("member", "GET", f"{P}/model-versions")).json()["items"][0]["id"]
    args = [*CLI, "jobs", "submit", "-p", "search-a", "--type", "evaluate",
            "--dataset-version", version, "--model-version", model_id]  # fmt: skip
    cli = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    for _ in range(100):
        if len((await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]) == 2:
            break
        await asyncio.sleep(0.2)
    await _run_worker(make_worker(settings))
    stdout, stderr = await asyncio.wait_for(cli.communicate(), timeout=120)
    assert cli.returncode == 0, stderr.decode()
    assert f"Model version {model_id} on dataset version {version}" in stdout.decode()
    assert "bm25" in stdout.decode() and "zero_shot" in stdout.decode()

    # the rest of the version's life from the command line, ids whole wherever a later command needs one
    datasets = recforge("data", "list", "-p", "search-a", env=env)
    assert datasets.returncode == 0 and version in datasets.stdout, datasets.stdout
    jobs = recforge("jobs", "list", "-p", "search-a", env=env)
    assert jobs.returncode == 0, jobs.stderr
    job_ids = [j["id"] for j in (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]]
    assert all(job_id in jobs.stdout for job_id in job_ids) and model_id in jobs.stdout
    models = recforge("models", "list", "-p", "search-a", env=env)
    assert models.returncode == 0 and model_id in models.stdout and "bi_encoder" in models.stdout
    shown = recforge("models", "show", model_id, env=env)
    assert shown.returncode == 0 and "this version" in shown.stdout and "bm25" in shown.stdout
    nothing = recforge("deployments", "list", "-p", "search-a", env=env)
    assert nothing.returncode == 0 and "Nothing deployed yet" in nothing.stderr
    owner = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["owner"])
    promoted = recforge("models", "promote", model_id, env=owner)
    assert promoted.returncode == 0, promoted.stderr
    assert f"Promoted {model_id} as the retriever (all traffic)" in promoted.stdout
    deployed = recforge("deployments", "list", "-p", "search-a", env=env)
    assert deployed.returncode == 0 and model_id in deployed.stdout and "retriever" in deployed.stdout


class _StopAt(JobControl):
    """A real control that is asked to stop the moment the job reports a phase (as a cancel would)."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self._phase = phase

    def report(self, **fields: Any) -> None:
        super().report(**fields)
        if fields.get("phase") == self._phase:
            self.stop_for(StopReason.cancelled)


async def test_an_export_switches_to_its_graphs_only_once_they_are_recorded(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    model = await _run_job(
        world,
        settings,
        {"job_type": "bi_encoder", "dataset_version_id": version, "base_model": str(tiny_model),
         "hyperparameters": {"max_steps": 5, "batch_size": 16, "max_length": 24}},
    )  # fmt: skip
    served = {name: settings.data_dir / model["artifacts"][name]["path"] for name in ("model", "model_int8")}
    before = {name: path.read_bytes() for name, path in served.items()}
    folder = served["model"].parent

    # an export stopped during its checks leaves the served graphs and nothing of its own
    submitted = await world.call(
        "member",
        "POST",
        f"{P}/training-jobs",
        json={"job_type": "export", "input_model_version_id": model["id"]},
    )
    claimed = await JobStore(sessionmaker).claim(uuid.UUID(submitted.json()["id"]), "test:1", 3)
    assert isinstance(claimed, Claimed)
    run = JobRun(settings, claimed, _StopAt("check_int8"), torch.device("cpu"), started=0.0)
    with pytest.raises(JobCancelled):
        await export_job.run(run)
    assert {name: path.read_bytes() for name, path in served.items()} == before
    assert sorted(p.name for p in folder.glob("model*.onnx")) == sorted(p.name for p in served.values())
    await JobStore(sessionmaker).finish(claimed, JobStatus.cancelled)

    # one that ends: the registry names the new graphs, and the old int8 graph is gone
    exported = await _run_job_result(
        world, settings, {"job_type": "export", "input_model_version_id": model["id"]}
    )
    after = (await world.call("member", "GET", f"/api/v1/model-versions/{model['id']}")).json()
    new_int8 = settings.data_dir / after["artifacts"]["model_int8"]["path"]
    assert new_int8 != served["model_int8"] and new_int8.is_file() and not served["model_int8"].exists()
    assert after["artifacts"]["model_int8"]["path"] == exported["files"]["model_int8"]["path"]
    assert served["model"].read_bytes() == before["model"]


async def _run_job_result(w: World, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    submitted = await w.call("member", "POST", f"{P}/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    await _run_worker(make_worker(settings))
    job = await _job(w, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return dict(job["result"])


async def test_a_job_retried_after_its_compute_limit_gets_its_whole_limit_again(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    version = await _project_with_data(world)
    body = {
        "job_type": "bi_encoder",
        "dataset_version_id": version,
        "base_model": str(tiny_model),
        "compute_limit_hours": 0.01,
        "hyperparameters": {"max_steps": 3, "batch_size": 8, "max_length": 24},
    }
    job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
    async with sessionmaker() as session:  # as a run stopped at its limit leaves it
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == uuid.UUID(job_id))
            .values(status="failed", compute_seconds=40.0, error="stopped at its compute limit of 0.01 h")
        )
        await session.commit()
    retried = await world.call("member", "POST", f"/api/v1/training-jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["compute_seconds"] == 0
    await _run_worker(make_worker(settings))
    job = await _job(world, job_id)
    assert job["status"] == "succeeded", job["error"]


async def test_the_trainer_refuses_a_base_model_inside_the_data_directory(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tiny_model: Path
) -> None:
    """A row that names another project's folder (written past the api) fails: the trainer checks too,
    and a link under a model root that points into the data directory is followed before the check."""
    import shutil

    version = await _project_with_data(world)
    stolen = settings.data_dir / "jobs" / "another-project" / "checkpoint" / "model"
    shutil.copytree(tiny_model, stolen, dirs_exist_ok=True)
    link = Path(settings.model_roots) / "innocent-looking"
    link.unlink(missing_ok=True)
    link.symlink_to(stolen, target_is_directory=True)
    for base_model in (str(stolen), str(link)):
        body = {"job_type": "bi_encoder", "dataset_version_id": version, "base_model": str(tiny_model)}
        job_id = (await world.call("member", "POST", f"{P}/training-jobs", json=body)).json()["id"]
        async with sessionmaker() as session:
            await session.execute(
                update(TrainingJob).where(TrainingJob.id == uuid.UUID(job_id)).values(base_model=base_model)
            )
            await session.commit()
        await _run_worker(make_worker(settings))
        job = await _job(world, job_id)
        assert job["status"] == "failed" and "data directory" in job["error"], job
