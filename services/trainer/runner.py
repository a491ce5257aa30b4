"""The arq job: claim a training job row, run it in a thread, report, register, clean up.

Postgres holds the truth about a job. The row is claimed with a lock, so two workers never run
the same job; progress, heartbeat and the compute used are written every progress_interval_s; a
cancellation is seen at the next write. A run that dies leaves its checkpoint behind, and the
reaper (see worker.py) queues the job again so another worker resumes from it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select, update

from services.trainer.control import JobCancelled, JobControl
from shared.config import Settings
from shared.db import unit_of_work
from shared.jobs import RUN_TRAINING_JOB, arq_job_id, progress_channel
from shared.models import Dataset, DatasetVersion, ModelVersion, Project, TrainingJob
from shared.models.enums import DatasetKind, JobStatus, JobType, ModelStatus
from shared.training import TASK_OF, Hyperparameters

log = logging.getLogger("recforge.trainer")

CONCURRENCY_RETRY = timedelta(seconds=15)
LIBRARIES = (
    "recforge",
    "torch",
    "transformers",
    "tokenizers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
)


class ComputeLimitReached(JobCancelled):
    pass


@dataclass
class Claimed:
    job: TrainingJob
    kind: DatasetKind
    tables: dict[str, Any]
    catalog_tables: dict[str, Any] | None
    compute_before: float


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    if os.environ.get("RECFORGE_GIT_COMMIT"):
        return os.environ["RECFORGE_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


async def _claim(ctx: dict[str, Any], job_id: uuid.UUID) -> Claimed | str:
    """Take the job if it is queued and its project has room; else say why not."""
    settings: Settings = ctx["settings"]
    async with unit_of_work(ctx["sessionmaker"]) as session:
        job = (
            await session.execute(select(TrainingJob).where(TrainingJob.id == job_id).with_for_update())
        ).scalar_one_or_none()
        if job is None:
            return "gone"
        if job.status != JobStatus.queued.value:
            return f"already {job.status}"
        project = (
            await session.execute(select(Project).where(Project.id == job.project_id).with_for_update())
        ).scalar_one()
        running = (
            await session.execute(
                select(func.count()).where(
                    TrainingJob.project_id == project.id, TrainingJob.status == JobStatus.running.value
                )
            )
        ).scalar_one()
        if running >= project.max_concurrent_jobs:
            return "wait"
        if job.attempts >= settings.max_job_attempts:
            job.status = JobStatus.failed.value
            job.error = f"gave up after {job.attempts} runs that did not finish"
            job.finished_at = func.now()
            return "failed"
        if JobType(job.job_type) not in TASK_OF:
            job.status = JobStatus.failed.value
            job.error = f"{job.job_type} jobs are not run by this trainer version"
            job.finished_at = func.now()
            return "failed"
        row = (
            await session.execute(
                select(DatasetVersion, Dataset)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(DatasetVersion.id == job.dataset_version_id)
            )
        ).one()
        version, dataset = row
        catalog_tables = None
        if "catalog" not in version.tables:
            from shared.datasets.catalog import latest_catalog_version

            catalog = await latest_catalog_version(session, project.id)
            catalog_tables = catalog.tables if catalog else None
        job.status = JobStatus.running.value
        job.worker_id = ctx["worker_id"]
        job.attempts += 1
        job.started_at = job.started_at or func.now()
        job.heartbeat_at = func.now()
        job.progress = {**(job.progress or {}), "phase": "starting"}
        await session.flush()
        await session.refresh(job)
        return Claimed(job, DatasetKind(dataset.kind), version.tables, catalog_tables, job.compute_seconds)


async def _publish(ctx: dict[str, Any], job_id: uuid.UUID, payload: dict[str, Any]) -> None:
    try:
        await ctx["redis"].publish(progress_channel(job_id), json.dumps(payload, default=str))
    except Exception:  # progress is advisory: Postgres has the truth
        log.warning("could not publish progress", exc_info=True)


async def _heartbeat(ctx: dict[str, Any], claimed: Claimed, control: JobControl, device: str) -> None:
    """Write progress, heartbeat and compute every progress_interval_s; turn a cancellation or the
    compute limit into the stop flag the training thread checks."""
    settings: Settings = ctx["settings"]
    job = claimed.job
    gpu = device == "cuda"
    last = time.monotonic()
    limit_s = job.compute_limit_hours * 3600
    while True:
        await asyncio.sleep(settings.progress_interval_s)
        now = time.monotonic()
        delta, last = now - last, now
        _, progress = control.snapshot()
        used = claimed.compute_before + (now - control.started)
        async with unit_of_work(ctx["sessionmaker"]) as session:
            result = await session.execute(
                update(TrainingJob)
                .where(
                    TrainingJob.id == job.id,
                    TrainingJob.status == JobStatus.running.value,
                    TrainingJob.worker_id == ctx["worker_id"],
                )
                .values(progress=progress, heartbeat_at=func.now(), compute_seconds=used)
                .returning(TrainingJob.cancel_requested_at)
            )
            row = result.first()
            column = Project.used_gpu_hours if gpu else Project.used_cpu_hours
            await session.execute(
                update(Project).where(Project.id == job.project_id).values({column: column + delta / 3600})
            )
        await _publish(ctx, job.id, {"id": str(job.id), "status": "running", "progress": progress})
        if row is None:  # reaped or taken over: stop quietly
            control.stop.set()
            return
        if row[0] is not None:
            control.stop.set()
        if used > limit_s:
            control.limit_reached = True
            control.stop.set()


async def _finish(
    ctx: dict[str, Any],
    job: TrainingJob,
    status: JobStatus,
    *,
    error: str | None = None,
    progress: dict[str, Any] | None = None,
) -> None:
    async with unit_of_work(ctx["sessionmaker"]) as session:
        values: dict[str, Any] = {
            "status": status.value,
            "finished_at": func.now(),
            "heartbeat_at": func.now(),
            "error": error,
        }
        if progress is not None:
            values["progress"] = progress
        await session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(**values))
    await _publish(ctx, job.id, {"id": str(job.id), "status": status.value})


async def _register(
    ctx: dict[str, Any], claimed: Claimed, outcome: Any, version_id: uuid.UUID, device: str, seconds: float
) -> uuid.UUID:
    job = claimed.job
    relative = Path("artifacts") / str(job.project_id) / str(version_id)
    artifacts = {
        name: {**entry, "path": str(relative / entry["path"])} for name, entry in outcome.artifacts.items()
    }
    async with unit_of_work(ctx["sessionmaker"]) as session:
        await session.execute(select(Project.id).where(Project.id == job.project_id).with_for_update())
        number = (
            await session.execute(
                select(func.coalesce(func.max(ModelVersion.version), 0)).where(
                    ModelVersion.project_id == job.project_id
                )
            )
        ).scalar_one() + 1
        session.add(
            ModelVersion(
                id=version_id,
                project_id=job.project_id,
                version=number,
                task_type=TASK_OF[JobType(job.job_type)].value,
                status=ModelStatus.candidate.value,
                base_model=job.base_model or "",
                training_job_id=job.id,
                dataset_version_id=job.dataset_version_id,
                parent_model_version_id=job.input_model_version_id,
                hyperparameters=job.hyperparameters,
                config=outcome.config,
                metrics=outcome.metrics,
                baselines=outcome.baselines,
                artifacts=artifacts,
                library_versions=library_versions(),
                git_commit=git_commit(),
                duration_s=round(seconds, 2),
                compute={
                    "device": device,
                    "train_seconds": outcome.train.train_seconds,
                    "steps": outcome.train.steps,
                    "pairs_per_s": outcome.train.pairs_per_s,
                    "resumed_from_step": outcome.train.resumed_from_step,
                    "runs": job.attempts,
                    "export": outcome.export,
                },
            )
        )
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job.id)
            .values(
                status=JobStatus.succeeded.value,
                finished_at=func.now(),
                error=None,
                progress={"phase": "done", "step": outcome.train.steps, "total_steps": outcome.train.steps},
            )
        )
    await _publish(ctx, job.id, {"id": str(job.id), "status": JobStatus.succeeded.value})
    return version_id


async def run_training_job(ctx: dict[str, Any], job_id: str) -> str:
    """arq entry point. Idempotent: a job that is not queued is left alone."""
    from services.trainer.data import load
    from services.trainer.finetune import pick_device, setup_threads
    from services.trainer.pipeline import JobSpec, run_job

    settings: Settings = ctx["settings"]
    training_job_id = uuid.UUID(job_id)
    claimed = await _claim(ctx, training_job_id)
    if claimed == "wait":
        # the project runs as many jobs as it may: look again shortly, as a new queue entry
        await ctx["redis"].enqueue_job(
            RUN_TRAINING_JOB,
            job_id,
            _job_id=f"{ctx.get('job_id', arq_job_id(training_job_id))}:w{int(time.time())}",
            _queue_name=settings.queue_name,
            _defer_by=CONCURRENCY_RETRY,
        )
        return "waiting for a free slot in the project"
    if isinstance(claimed, str):
        return claimed
    job = claimed.job
    work_dir = settings.jobs_dir / str(job.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    version_id = uuid.uuid4()
    out_dir = settings.artifacts_dir / str(job.project_id) / str(version_id)
    control = JobControl()
    started = time.monotonic()
    device_name = "cpu"
    heartbeat: asyncio.Task[None] | None = None
    try:
        device = pick_device(job.device)
        device_name = device.type
        async with unit_of_work(ctx["sessionmaker"]) as session:
            await session.execute(
                update(TrainingJob).where(TrainingJob.id == job.id).values(device=device_name)
            )
        heartbeat = asyncio.create_task(_heartbeat(ctx, claimed, control, device_name))
        control.report(phase="loading data")
        setup_threads()
        examples = await anyio.to_thread.run_sync(
            load, settings.data_dir, claimed.kind, claimed.tables, claimed.catalog_tables
        )
        spec = JobSpec(
            job_type=JobType(job.job_type),
            base_model=job.base_model or "",
            hyperparameters=Hyperparameters.model_validate(job.hyperparameters),
            examples=examples,
            device=device,
            work_dir=work_dir,
            out_dir=out_dir,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            int8_tolerance=settings.int8_tolerance,
        )
        log.info("job running", extra={"job_id": job_id, "attempt": job.attempts, "device": device_name})
        outcome = await anyio.to_thread.run_sync(run_job, spec, control, abandon_on_cancel=False)
    except JobCancelled:
        _remove(out_dir)
        _remove(work_dir)
        if control.limit_reached:
            await _finish(
                ctx,
                job,
                JobStatus.failed,
                error=f"stopped at its compute limit of {job.compute_limit_hours} h",
            )
            return "failed: compute limit"
        await _finish(ctx, job, JobStatus.cancelled, progress={**control.snapshot()[1], "phase": "cancelled"})
        log.info("job cancelled", extra={"job_id": job_id})
        return "cancelled"
    except Exception as exc:
        _remove(out_dir)
        _remove(work_dir)
        log.exception("job failed", extra={"job_id": job_id})
        await _finish(ctx, job, JobStatus.failed, error=f"{type(exc).__name__}: {exc}"[:4000])
        return "failed"
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
    await _register(ctx, claimed, outcome, version_id, device_name, time.monotonic() - started)
    _remove(work_dir)
    log.info("job succeeded", extra={"job_id": job_id, "model_version_id": str(version_id)})
    return f"succeeded: model version {version_id}"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
