"""arq worker settings for the trainer. Run with ``recforge worker``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import Any, ClassVar

from arq import func
from arq.constants import in_progress_key_prefix, job_key_prefix
from fastapi import FastAPI
from sqlalchemy import func as sql_func
from sqlalchemy import select

from services.trainer.health import BackgroundHealthServer
from services.trainer.runner import run_training_job
from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker, unit_of_work
from shared.http import infra_checks, setup_common
from shared.jobs import RUN_TRAINING_JOB, arq_job_id, enqueue_training_job
from shared.models import TrainingJob
from shared.models.enums import JobStatus

log = logging.getLogger("recforge.trainer")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def health_app(ctx: dict[str, Any]) -> FastAPI:
    app = FastAPI(title="RecForge Trainer", version="0.1.0")

    setup_common(app, lambda _: infra_checks(ctx["engine"], ctx["redis"]))
    return app


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    engine = create_engine(settings, pool_size=4)
    ctx.update(
        settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine), worker_id=worker_id()
    )
    if settings.trainer_port:
        server = BackgroundHealthServer(health_app(ctx), settings.host, settings.trainer_port)
        await server.start()
        ctx["health_server"] = server
    ctx["reaper"] = asyncio.create_task(reaper_loop(ctx))
    log.info("trainer worker started", extra={"worker_id": ctx["worker_id"]})


async def shutdown(ctx: dict[str, Any]) -> None:
    if "reaper" in ctx:
        ctx["reaper"].cancel()
        await asyncio.gather(ctx["reaper"], return_exceptions=True)
    if "health_server" in ctx:
        await ctx["health_server"].stop()
    await ctx["engine"].dispose()
    log.info("trainer worker stopped", extra={"worker_id": ctx.get("worker_id")})


REAP_EVERY_S = 10.0


async def reaper_loop(ctx: dict[str, Any]) -> None:
    """Every worker reaps, beside the job it runs (an arq cron would wait for the job's slot);
    row locks with SKIP LOCKED keep concurrent reapers from touching the same job."""
    while True:
        try:
            await reap_stale_jobs(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reaping failed; trying again shortly")
        await asyncio.sleep(REAP_EVERY_S)


async def reap_stale_jobs(ctx: dict[str, Any]) -> dict[str, int]:
    """Requeue running jobs whose worker stopped sending heartbeats, so another worker resumes them
    from their checkpoint (a job that has used all its runs fails instead); enqueue queued jobs
    the queue lost (a Redis failure right after the API committed them). No job stays running or
    queued forever."""
    settings: Settings = ctx["settings"]
    stale_after = timedelta(seconds=settings.job_heartbeat_timeout_s)
    redis = ctx["redis"]
    requeued: list[TrainingJob] = []
    failed: list[str] = []
    async with unit_of_work(ctx["sessionmaker"]) as session:
        stale = (
            await session.execute(
                select(TrainingJob)
                .where(
                    TrainingJob.status == JobStatus.running.value,
                    TrainingJob.heartbeat_at < sql_func.now() - stale_after,
                )
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        for job in stale:
            silent = int(stale_after.total_seconds())
            if job.attempts >= settings.max_job_attempts:
                job.status = JobStatus.failed.value
                job.error = f"worker vanished (no heartbeat for {silent} s) on its last allowed run"
                job.finished_at = sql_func.now()
                failed.append(str(job.id))
            else:
                job.status = JobStatus.queued.value
                job.worker_id = None
                job.error = (
                    f"worker vanished (no heartbeat for {silent} s); resuming from the last checkpoint"
                )
                requeued.append(job)
        lost = (
            await session.execute(
                select(TrainingJob).where(
                    TrainingJob.status == JobStatus.queued.value,
                    TrainingJob.queued_at < sql_func.now() - timedelta(minutes=1),
                )
            )
        ).scalars()
        missing = [
            job
            for job in lost
            if job not in requeued
            and not await redis.exists(job_key_prefix + arq_job_id(job.id, job.retries, job.attempts))
        ]
    for job in requeued:
        # the dead worker's claim in arq would otherwise hold the job until arq's own timeout
        for attempts in {0, job.attempts - 1}:
            await redis.delete(in_progress_key_prefix + arq_job_id(job.id, job.retries, attempts))
    for job in [*requeued, *missing]:
        # each attempt has its own arq id: the dead run's id may hold a result arq keeps for an hour
        await enqueue_training_job(
            redis,
            settings.queue_name,
            job.id,
            retries=job.retries,
            priority=job.priority,
            attempts=job.attempts,
        )
    if requeued or failed or missing:
        log.warning(
            "reaped jobs",
            extra={
                "requeued": [str(j.id) for j in requeued],
                "failed": failed,
                "re_enqueued": [str(j.id) for j in missing],
            },
        )
    return {"requeued": len(requeued), "failed": len(failed), "re_enqueued": len(missing)}


class WorkerSettings:
    """Redis settings and the queue name are passed by `recforge worker` from the process settings."""

    functions: ClassVar[list[Any]] = [func(run_training_job, name=RUN_TRAINING_JOB)]
    on_startup = startup
    on_shutdown = shutdown
    health_check_interval = 10
    # Fine-tunes run for many minutes: never let arq's 300 s default kill them.
    job_timeout = timedelta(hours=12)
    # Runs are counted in Postgres (attempts, RECFORGE_MAX_JOB_ATTEMPTS); arq only has to keep trying.
    max_tries = 100
    allow_abort_jobs = True
    max_jobs = 1
