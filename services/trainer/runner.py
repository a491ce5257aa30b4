"""The arq job: claim a training job row, run it in a thread, report, register, clean up.

Postgres holds the truth about a job. The row is claimed with a lock, so two workers never run
the same job; progress, heartbeat and the compute used are written every progress_interval_s; a
cancellation is seen at the next write. A run that dies leaves its checkpoint behind, and the
reaper (see worker.py) queues the job again so another worker resumes from it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import anyio
from sqlalchemy import func, select, update

from services.trainer.control import JobCancelled, JobControl
from shared.artifacts import rooted, unrooted, version_folder
from shared.config import Settings
from shared.db import unit_of_work
from shared.jobs import RUN_TRAINING_JOB, arq_job_id, progress_channel
from shared.models import Dataset, DatasetVersion, ModelVersion, Project, TrainingJob
from shared.models.enums import DatasetKind, JobStatus, JobType, ModelStatus
from shared.training import NEEDS_MODEL, TASK_OF, Hyperparameters

log = logging.getLogger("recforge.trainer")
T = TypeVar("T")

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
    kind: DatasetKind | None  # the data's kind; None for an index job (catalog only)
    tables: dict[str, Any]
    catalog_tables: dict[str, Any] | None  # the project's catalog when `tables` has none
    compute_before: float
    version: ModelVersion | None = None  # what an evaluate, export or index job works on
    catalog_version_id: uuid.UUID | None = None  # index: the catalog being embedded


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
        found = await _inputs(session, job)
        if isinstance(found, str):
            job.status = JobStatus.failed.value
            job.error = found
            job.finished_at = func.now()
            return "failed"
        job.status = JobStatus.running.value
        job.worker_id = ctx["worker_id"]
        job.attempts += 1
        job.started_at = job.started_at or func.now()
        job.heartbeat_at = func.now()
        job.progress = {**(job.progress or {}), "phase": "starting"}
        await session.flush()
        await session.refresh(job)
        found.job = job
        found.compute_before = job.compute_seconds
        return found


async def _data(
    session: Any, dataset_version_id: uuid.UUID | None, project_id: uuid.UUID
) -> tuple[DatasetKind, dict[str, Any], dict[str, Any] | None, uuid.UUID | None] | None:
    """A dataset version's kind and tables, with the project's latest catalog when it has none."""
    from shared.datasets.catalog import latest_catalog_version

    row = (
        await session.execute(
            select(DatasetVersion, Dataset)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(DatasetVersion.id == dataset_version_id)
        )
    ).one_or_none()
    if row is None:
        return None
    version, dataset = row
    if "catalog" in version.tables:
        return DatasetKind(dataset.kind), version.tables, None, version.id
    catalog = await latest_catalog_version(session, project_id)
    return (
        DatasetKind(dataset.kind),
        version.tables,
        catalog.tables if catalog else None,
        catalog.id if catalog else None,
    )


async def _inputs(session: Any, job: TrainingJob) -> Claimed | str:
    """What the job reads, or why it cannot run."""
    from shared.datasets.catalog import latest_catalog_version

    job_type = JobType(job.job_type)
    version = None
    if job_type in NEEDS_MODEL:
        version = await session.get(ModelVersion, job.input_model_version_id)
        if version is None or "model" not in (version.artifacts or {}):
            return "its model version is gone or has no ONNX graph"
    elif job_type not in TASK_OF:
        return f"{job.job_type} jobs are not run by this trainer version"
    if job_type == JobType.index_catalog:
        if job.dataset_version_id is not None:
            data = await _data(session, job.dataset_version_id, job.project_id)
            if data is None or "catalog" not in data[1]:
                return "its dataset version is gone or holds no catalog"
            return Claimed(job, None, data[1], None, 0.0, version, data[3])
        catalog = await latest_catalog_version(session, job.project_id)
        if catalog is None:
            return "the project has no catalog to index: import one first"
        return Claimed(job, None, catalog.tables, None, 0.0, version, catalog.id)
    source = version.dataset_version_id if job_type == JobType.export and version else job.dataset_version_id
    data = await _data(session, source, job.project_id)
    if data is None:
        return "its dataset version is gone"
    kind, tables, catalog_tables, _ = data
    return Claimed(job, kind, tables, catalog_tables, 0.0, version)


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


def _succeeded(job: TrainingJob, progress: dict[str, Any], **values: Any) -> Any:
    """The statement that ends a job as succeeded."""
    return (
        update(TrainingJob)
        .where(TrainingJob.id == job.id)
        .values(
            status=JobStatus.succeeded.value, finished_at=func.now(), error=None, progress=progress, **values
        )
    )


async def _register(
    ctx: dict[str, Any], claimed: Claimed, outcome: Any, version_id: uuid.UUID, device: str, seconds: float
) -> uuid.UUID:
    job = claimed.job
    artifacts = rooted(outcome.artifacts, version_folder(job.project_id, version_id))
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
            _succeeded(
                job, {"phase": "done", "step": outcome.train.steps, "total_steps": outcome.train.steps}
            )
        )
    await _publish(ctx, job.id, {"id": str(job.id), "status": JobStatus.succeeded.value})
    return version_id


async def _in_thread(control: JobControl, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread. When the worker is stopping (the arq task is cancelled), ask the
    thread to stop at its next check and wait for it, so nothing is left writing files."""
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        control.stop.set()
        with contextlib.suppress(BaseException):
            await future
        raise


async def _hand_back(ctx: dict[str, Any], job: TrainingJob) -> None:
    """The worker is shutting down: queue the job again now (its checkpoint stays) rather than leave
    it `running` until the reaper notices the silence."""
    async with unit_of_work(ctx["sessionmaker"]) as session:
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job.id, TrainingJob.worker_id == ctx["worker_id"])
            .values(
                status=JobStatus.queued.value,
                worker_id=None,
                error="its worker stopped; the next run resumes from the last checkpoint",
            )
        )


def _baselines_cache(
    settings: Settings, dataset_version_id: Any, base_model: str, max_length: int, job_type: JobType
) -> Path:
    from services.trainer.assess import baselines_key

    key = baselines_key(str(dataset_version_id), base_model, max_length, job_type)
    return settings.cache_dir / "baselines" / f"{key}.json"


async def _complete(
    ctx: dict[str, Any],
    claimed: Claimed,
    result: dict[str, Any],
    artifacts: dict[str, Any] | None = None,
    export: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
) -> None:
    """Store an evaluate/export/index job's result and, for export and index, the version's new files."""
    job = claimed.job
    version = claimed.version
    assert version is not None
    async with unit_of_work(ctx["sessionmaker"]) as session:
        if artifacts or export:
            row = (
                await session.execute(
                    select(ModelVersion).where(ModelVersion.id == version.id).with_for_update()
                )
            ).scalar_one()
            if artifacts:
                row.artifacts = {**row.artifacts, **artifacts}
            if export:
                row.compute = {**row.compute, "export": {**row.compute.get("export", {}), "rebuild": export}}
        await session.execute(_succeeded(job, {**(progress or {}), "phase": "done"}, result=result))
    await _publish(ctx, job.id, {"id": str(job.id), "status": JobStatus.succeeded.value})


async def _run_on_version(
    ctx: dict[str, Any], claimed: Claimed, control: JobControl, device: Any
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Run an evaluate, export or index job: (job result, artifact entries to merge, export info)."""
    from services.trainer.data import load
    from services.trainer.pipeline import VersionSpec, run_evaluate, run_export, run_index
    from shared.datasets.catalog import catalog_text

    settings: Settings = ctx["settings"]
    job, version = claimed.job, claimed.version
    assert version is not None
    job_type = JobType(job.job_type)
    task = JobType(version.task_type)
    relative = version_folder(version.project_id, version.id)
    spec = VersionSpec(
        job_type=task,
        directory=settings.data_dir / relative,
        artifacts=unrooted(version.artifacts, relative),
        config=version.config,
        metrics=version.metrics,
        base_model=version.base_model,
        device=device,
        int8_tolerance=settings.int8_tolerance,
    )
    if job_type == JobType.index_catalog:
        spec.catalog = await anyio.to_thread.run_sync(catalog_text, settings.data_dir, claimed.tables)
        spec.catalog_version_id = claimed.catalog_version_id
        found = await _in_thread(control, run_index, spec, control)
        found["files"] = rooted(found["files"], relative)
        return found, {"catalog_index": found}, None
    assert claimed.kind is not None
    spec.examples = await anyio.to_thread.run_sync(
        load, settings.data_dir, claimed.kind, claimed.tables, claimed.catalog_tables
    )
    if job_type == JobType.evaluate:
        spec.baselines_cache = _baselines_cache(
            settings, job.dataset_version_id, version.base_model, spec.max_length, task
        )
        found = await _in_thread(control, run_evaluate, spec, control)
        found.update(model_version_id=str(version.id), dataset_version_id=str(job.dataset_version_id))
        return found, None, None
    info, files = await _in_thread(control, run_export, spec, control)
    files = rooted(files, relative)
    return {"model_version_id": str(version.id), **info, "files": files}, files, info


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
    fine_tune = JobType(job.job_type) in TASK_OF
    work_dir = settings.jobs_dir / str(job.id)
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
        log.info("job running", extra={"job_id": job_id, "attempt": job.attempts, "device": device_name})
        if not fine_tune:
            result, artifacts, export = await _run_on_version(ctx, claimed, control, device)
        else:
            assert claimed.kind is not None
            work_dir.mkdir(parents=True, exist_ok=True)
            examples = await anyio.to_thread.run_sync(
                load, settings.data_dir, claimed.kind, claimed.tables, claimed.catalog_tables
            )
            hyperparameters = Hyperparameters.model_validate(job.hyperparameters)
            spec = JobSpec(
                job_type=JobType(job.job_type),
                base_model=job.base_model or "",
                hyperparameters=hyperparameters,
                examples=examples,
                device=device,
                work_dir=work_dir,
                out_dir=out_dir,
                checkpoint_interval_s=settings.checkpoint_interval_s,
                int8_tolerance=settings.int8_tolerance,
                baselines_cache=_baselines_cache(
                    settings,
                    job.dataset_version_id,
                    job.base_model or "",
                    hyperparameters.max_length,
                    JobType(job.job_type),
                ),
            )
            outcome = await _in_thread(control, run_job, spec, control)
    except asyncio.CancelledError:
        _remove(out_dir)
        await _hand_back(ctx, job)
        log.info("job handed back: the worker is stopping", extra={"job_id": job_id})
        raise
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
    if not fine_tune:
        await _complete(ctx, claimed, result, artifacts, export, control.snapshot()[1])
        log.info("job succeeded", extra={"job_id": job_id})
        return "succeeded"
    await _register(ctx, claimed, outcome, version_id, device_name, time.monotonic() - started)
    _remove(work_dir)
    log.info("job succeeded", extra={"job_id": job_id, "model_version_id": str(version_id)})
    return f"succeeded: model version {version_id}"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
