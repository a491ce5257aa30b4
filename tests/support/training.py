"""Training through the real queue: data uploaded through the API, jobs run by a burst arq worker."""

from __future__ import annotations

import io
from typing import Any

from services.trainer.worker import TRAINING_FUNCTION, ResilientWorker, shutdown, startup
from shared.config import Settings
from shared.jobs import redis_settings
from tests.support.world import World

PROJECT = "/api/v1/projects/search-a"


def make_worker(settings: Settings, **overrides: Any) -> ResilientWorker:
    quiet = settings.model_copy(update={"trainer_port": 0, "progress_interval_s": 0.2, **overrides})
    return ResilientWorker(
        functions=[TRAINING_FUNCTION],
        redis_settings=redis_settings(quiet),
        queue_name=quiet.queue_name,
        burst=True,
        poll_delay=0.1,
        handle_signals=False,
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": quiet},
        max_tries=100,
        max_jobs=1,  # as WorkerSettings: one job at a time per worker process
    )


async def run_worker(worker: ResilientWorker) -> None:
    try:
        await worker.async_run()
    finally:
        await worker.close()


async def upload(w: World, name: str, body: str, kind: str, project: str = PROJECT) -> str:
    """Import a small file as the member; return the new dataset version's id."""
    response = await w.call(
        "member",
        "POST",
        f"{project}/datasets",
        files=[("file", (name, io.BytesIO(body.encode())))],
        data={"kind": kind},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["version_id"])


async def train(w: World, settings: Settings, bodies: list[dict[str, Any]]) -> list[str]:
    """Submit the jobs, run a worker until the queue is empty; the model version each job made."""
    ids = []
    for body in bodies:
        response = await w.call("member", "POST", f"{PROJECT}/training-jobs", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    await run_worker(make_worker(settings))
    versions = []
    for job_id in ids:
        job = (await w.call("member", "GET", f"/api/v1/training-jobs/{job_id}")).json()
        assert job["status"] == "succeeded", job["error"]
        versions.append(job["model_version_ids"][0])
    return versions
