"""The arq job: claim a training job, run its handler, keep its row alive, record how it ended.

Postgres holds the truth about a job (see store.py). While a job runs, a heartbeat writes its progress,
the compute it used and the project's charge every progress_interval_s, and stops the run when the row
says it was cancelled, taken over, or over its compute limit; a cancellation also arrives at once on
Redis (cancel.py). A run that dies leaves its checkpoint behind, and the reaper (reaper.py) queues the
job again so another worker resumes from it."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from services.trainer import checkpoint_store, janitor
from services.trainer.context import WorkerContext, worker_context
from services.trainer.control import JobCancelled, JobControl, StopReason
from services.trainer.store import (
    Claimed,
    DatasetClash,
    NewDatasets,
    NewLabelingItems,
    NewVersion,
    NotClaimed,
)
from shared.artifacts import stored_files
from shared.config import Settings
from shared.datasets import storage
from shared.jobs import enqueue_training_job, progress_channel
from shared.models.enums import JobStatus, JobType
from shared.storage import object_store

if TYPE_CHECKING:
    from services.trainer.jobs.base import Handler, JobRun

log = logging.getLogger("recforge.trainer")


def handler(job_type: JobType) -> Handler:
    """The handler of a job type. torch and transformers load with the first job, not when the worker
    starts, so a worker is ready (and answers /readyz) in moments."""
    from services.trainer.jobs import evaluate, export, feedback, finetune, index, labeling

    handlers: dict[JobType, Handler] = {
        JobType.bi_encoder: finetune.run,
        JobType.cross_encoder: finetune.run,
        JobType.classifier: finetune.run,
        JobType.evaluate: evaluate.run,
        JobType.export: export.run,
        JobType.index_catalog: index.run,
        JobType.feedback: feedback.run,
        JobType.labeling: labeling.run,
    }
    return handlers[job_type]


async def publish(wc: WorkerContext, job_id: uuid.UUID, payload: dict[str, Any]) -> None:
    try:
        await wc.redis.publish(progress_channel(job_id), json.dumps(payload, default=str))
    except Exception:  # progress is advisory: Postgres has the truth
        log.warning("could not publish progress", exc_info=True)


def charge_scale(hyperparameters: dict[str, Any], gpu: bool) -> int:
    """What an hour of a job costs its project, in hours: a distributed fine-tune holds every machine it
    spans (``nodes``) and, on GPUs, one GPU per process."""
    nodes = int(hyperparameters.get("nodes") or 1)
    return nodes * int(hyperparameters.get("processes") or 1) if gpu else nodes


async def _heartbeat(wc: WorkerContext, claimed: Claimed, control: JobControl, gpu: bool) -> None:
    """Every progress_interval_s: write progress, heartbeat and compute; turn a cancellation, a lost
    claim or the compute limit into the stop flag the training thread checks.

    A beat that fails (the database does not answer) is tried again at the next interval; compute is
    charged from the last beat that got through. Once no beat has got through for half of
    job_heartbeat_timeout_s, the run stops: the reaper may soon hand the job to another worker, and two
    runs must never train the same job."""
    job = claimed.job
    settings = wc.settings
    last_beat = time.monotonic()
    give_up_after = settings.job_heartbeat_timeout_s / 2
    limit_s = job.compute_limit_hours * 3600
    scale = charge_scale(job.hyperparameters or {}, gpu)
    while True:
        asleep = time.monotonic()
        await asyncio.sleep(settings.progress_interval_s)
        now = time.monotonic()
        late = now - asleep - settings.progress_interval_s
        if late > give_up_after / 2:  # another worker's reaper would soon take this silence for death
            log.warning(
                "heartbeat %.1f s late: this worker's event loop was blocked",
                late,
                extra={"job_id": str(job.id)},
            )
        progress = control.progress
        used = claimed.compute_before + (now - control.started)
        try:
            beat = await wc.store.heartbeat(claimed, progress, used, (now - last_beat) * scale, gpu)
        except Exception as exc:
            silent = now - last_beat
            if silent >= give_up_after:
                log.error(
                    "no heartbeat got through for %.0f s: stopping the run",
                    silent,
                    extra={"job_id": str(job.id)},
                )
                control.stop_for(StopReason.unreachable)
                return
            log.warning(
                "heartbeat failed (%s); trying again in %.1f s",
                f"{type(exc).__name__}: {exc}"[:200],
                settings.progress_interval_s,
                extra={"job_id": str(job.id)},
            )
            continue
        last_beat = now
        await publish(wc, job.id, {"id": str(job.id), "status": "running", "progress": progress})
        if not beat.owned:  # reaped or taken over: stop quietly
            control.stop_for(StopReason.superseded)
            return
        if beat.cancel_requested:
            control.stop_for(StopReason.cancelled)
        if used > limit_s:
            control.stop_for(StopReason.compute_limit)


async def _end(
    wc: WorkerContext,
    claimed: Claimed,
    status: JobStatus,
    *,
    error: str | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """End the job (if it is still this run's) and tell its followers; whether it was."""
    owned = await wc.store.finish(claimed, status, error=error, progress=progress)
    if owned:
        await publish(wc, claimed.job.id, {"id": str(claimed.job.id), "status": status.value})
    return owned


async def _requeue(wc: WorkerContext, claimed: Claimed, reason: str) -> bool:
    """Hand the job back and queue its next run now; when the database or Redis is still away, the
    reaper does it once they answer (the job's heartbeat has stopped)."""
    try:
        if not await wc.store.hand_back(claimed, reason):
            return False
        job = claimed.job
        await enqueue_training_job(
            wc.redis, wc.settings.queue_name, job.id, retries=job.retries, priority=job.priority,
            attempts=claimed.attempt,
        )  # fmt: skip
    except Exception:
        log.warning("could not hand the job back; the reaper will", extra={"job_id": str(claimed.job.id)})
        return False
    return True


def _remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _discard(work_dir: Path | None) -> None:
    """A job's work folder and the checkpoints the store keeps of it (the job has ended)."""
    if work_dir is not None:
        checkpoint_store.discard(work_dir)


async def _wake_waiting(wc: WorkerContext, project_id: uuid.UUID) -> None:
    """A job of the project left `running`: queue its waiting jobs again, each with its own priority.
    (A job that found its project full is not re-enqueued on a timer; the reaper also wakes jobs that
    have waited a minute, should this notice be lost.)"""
    try:
        for ref in await wc.store.waiting_jobs(project_id):
            await enqueue_training_job(
                wc.redis, wc.settings.queue_name, ref.id, retries=ref.retries, priority=ref.priority,
                attempts=ref.attempts,
            )  # fmt: skip
    except Exception:
        log.warning("could not wake the project's waiting jobs; the reaper will", exc_info=True)


async def sweep_disk(wc: WorkerContext) -> None:
    """What killed runs left on disk goes (services.trainer.janitor); a failure only waits a turn."""
    try:
        await janitor.sweep(wc.settings, wc.store)
    except Exception:
        log.warning("the janitor's sweep failed; it sweeps again after the next job", exc_info=True)


async def run_training_job(ctx: dict[str, Any], job_id: str) -> str:
    """arq entry point. Idempotent: a job that is not queued is left alone."""
    wc = worker_context(ctx)
    training_job_id = uuid.UUID(job_id)
    control = JobControl()
    # registered before the claim, so a cancellation published the moment the job turns running is heard
    wc.running[training_job_id] = control
    try:
        claim = await wc.store.claim(training_job_id, wc.worker_id, wc.settings.max_job_attempts)
        if isinstance(claim, NotClaimed):
            return claim.detail  # project full: it waits, and is woken when a slot frees
        try:
            return await _run(wc, claim, control)
        finally:
            await _wake_waiting(wc, claim.job.project_id)
            await sweep_disk(wc)
    finally:
        if wc.running.get(training_job_id) is control:
            del wc.running[training_job_id]


async def _run(wc: WorkerContext, claimed: Claimed, control: JobControl) -> str:
    from services.trainer.device import pick_device, setup_threads
    from services.trainer.jobs.base import JobRun

    job = claimed.job
    job_id = str(job.id)
    started = time.monotonic()
    control.started = started  # the job's compute counts from its claim
    job_run: JobRun | None = None
    heartbeat: asyncio.Task[None] | None = None
    try:
        device = pick_device(job.device)
        if not await wc.store.set_device(claimed, device.type):
            return "superseded: the job is no longer this run's"
        heartbeat = asyncio.create_task(_heartbeat(wc, claimed, control, gpu=device.type == "cuda"))
        control.resume_from(job.progress or {})
        control.report(phase="loading data")
        setup_threads()
        log.info("job running", extra={"job_id": job_id, "attempt": job.attempts, "device": device.type})
        job_run = JobRun(
            settings=wc.settings,
            claimed=claimed,
            control=control,
            device=device,
            started=started,
            note_output=lambda version_id: wc.store.note_output(claimed, version_id),
            store=wc.store,
        )
        outcome = await handler(claimed.job_type)(job_run)
    except asyncio.CancelledError:
        _remove(job_run.out_dir if job_run else None)
        await wc.store.hand_back(claimed, "its worker stopped; the next run resumes from the last checkpoint")
        log.info("job handed back: the worker is stopping", extra={"job_id": job_id})
        raise
    except JobCancelled:
        # this run's own files go; the job's checkpoints go only while the job is still this run's
        _remove(job_run.out_dir if job_run else None)
        work_dir = job_run.work_dir if job_run else None
        if control.reason == StopReason.superseded:
            log.warning("job taken over by another run: stopping this one", extra={"job_id": job_id})
            return "superseded: the job is no longer this run's"
        if control.reason == StopReason.unreachable:
            await _requeue(
                wc, claimed, "its worker lost the database; the next run resumes from the last checkpoint"
            )
            return "handed back: the database did not answer"
        if control.reason == StopReason.compute_limit:
            error = f"stopped at its compute limit of {job.compute_limit_hours} h"
            if await _end(wc, claimed, JobStatus.failed, error=error):
                _discard(work_dir)
            return "failed: compute limit"
        if await _end(wc, claimed, JobStatus.cancelled, progress={**control.progress, "phase": "cancelled"}):
            _discard(work_dir)
        log.info("job cancelled", extra={"job_id": job_id})
        return "cancelled"
    except Exception as exc:
        _remove(job_run.out_dir if job_run else None)
        log.exception("job failed", extra={"job_id": job_id})
        if await _end(wc, claimed, JobStatus.failed, error=f"{type(exc).__name__}: {exc}"[:4000]):
            _discard(job_run.work_dir if job_run else None)
        return "failed"
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
    if isinstance(outcome, NewDatasets):
        return await _record_datasets(wc, claimed, outcome)
    if isinstance(outcome, NewLabelingItems):
        if not await wc.store.record_labeling(claimed, outcome):
            log.warning("job taken over by another run: its result is dropped", extra={"job_id": job_id})
            return "superseded: the job is no longer this run's"
        await publish(wc, claimed.job.id, {"id": job_id, "status": JobStatus.succeeded.value})
        log.info("job succeeded", extra={"job_id": job_id, "pairs": len(outcome.items)})
        return "succeeded"
    try:  # a bucket gets the files before the row that names them is committed
        await anyio.to_thread.run_sync(_publish, wc.settings, outcome.artifacts or {})
    except Exception as exc:
        _remove(job_run.out_dir)
        log.exception("could not store the job's files", extra={"job_id": job_id})
        if await _end(wc, claimed, JobStatus.failed, error=f"{type(exc).__name__}: {exc}"[:4000]):
            _discard(job_run.work_dir)
        return "failed"
    if isinstance(outcome, NewVersion):
        owned = await wc.store.register(claimed, outcome, control.history("done"))
    else:
        owned = await wc.store.complete(claimed, outcome)
    if not isinstance(outcome, NewVersion):  # the set of graphs left unused goes
        unused = outcome.obsolete if owned else outcome.staged
        await anyio.to_thread.run_sync(_unstore, wc.settings, unused)
    if not owned:  # taken over while it finished: the result is not this run's to record
        _remove(job_run.out_dir)
        log.warning("job taken over by another run: its result is dropped", extra={"job_id": job_id})
        return "superseded: the job is no longer this run's"
    await publish(wc, job.id, {"id": job_id, "status": JobStatus.succeeded.value})
    _discard(job_run.work_dir)
    if isinstance(outcome, NewVersion):
        log.info("job succeeded", extra={"job_id": job_id, "model_version_id": str(outcome.id)})
        return f"succeeded: model version {outcome.id}"
    log.info("job succeeded", extra={"job_id": job_id})
    return "succeeded"


def _publish(settings: Settings, artifacts: dict[str, Any]) -> None:
    object_store(settings).publish(entry["path"] for entry in stored_files(artifacts))


def _unstore(settings: Settings, paths: tuple[Path, ...]) -> None:
    store = object_store(settings)
    for path in paths:
        path.unlink(missing_ok=True)
        if not store.is_local:
            store.delete(store.key_of(path))


async def _record_datasets(wc: WorkerContext, claimed: Claimed, outcome: NewDatasets) -> str:
    """Register a feedback job's dataset versions; the files of any not registered go."""
    job_id = str(claimed.job.id)

    def drop(keep: dict[uuid.UUID, bool]) -> None:
        for new in outcome.datasets:
            if not keep.get(new.version_id):
                storage.remove_version(object_store(wc.settings), new.storage_path)

    try:
        stored = await wc.store.record_datasets(claimed, outcome)
    except DatasetClash as exc:
        drop({})
        await _end(wc, claimed, JobStatus.failed, error=str(exc))
        return "failed"
    except BaseException:
        drop({})
        raise
    drop(stored or {})
    if stored is None:
        log.warning("job taken over by another run: its result is dropped", extra={"job_id": job_id})
        return "superseded: the job is no longer this run's"
    await publish(wc, claimed.job.id, {"id": job_id, "status": JobStatus.succeeded.value})
    log.info("job succeeded", extra={"job_id": job_id, "dataset_versions": len(outcome.datasets)})
    return "succeeded"
