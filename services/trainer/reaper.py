"""No job stays running or queued forever: every worker reaps, beside the job it runs (an arq cron would
wait for the job's slot); row locks with SKIP LOCKED keep concurrent reapers from touching the same job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix

from services.trainer.store import JobStore, LiveRuns
from shared.config import Settings
from shared.jobs import arq_job_id, enqueue_training_job

log = logging.getLogger("recforge.trainer")

REAP_EVERY_S = 10.0


async def reap_stale_jobs(
    settings: Settings, store: JobStore, redis: ArqRedis, live: LiveRuns | None = None
) -> dict[str, int]:
    """Requeue running jobs whose worker stopped sending heartbeats, so another worker resumes them
    from their checkpoint (a job that has used all its runs fails instead); enqueue queued jobs
    the queue lost (a Redis failure right after the API committed them)."""
    reaped = await store.reap(
        timedelta(seconds=settings.job_heartbeat_timeout_s),
        settings.max_job_attempts,
        timedelta(seconds=settings.lost_job_after_s),
        live=live,
    )
    missing = [
        job
        for job in reaped.waiting
        if not await redis.exists(job_key_prefix + arq_job_id(job.id, job.retries, job.attempts))
    ]
    for job in reaped.requeued:
        # the dead worker's claim in arq would otherwise hold the job until arq's own timeout
        for attempts in {0, job.attempts - 1}:
            await redis.delete(in_progress_key_prefix + arq_job_id(job.id, job.retries, attempts))
    for job in [*reaped.requeued, *missing]:
        # each attempt has its own arq id: the dead run's id may hold a result arq keeps for an hour
        await enqueue_training_job(
            redis,
            settings.queue_name,
            job.id,
            retries=job.retries,
            priority=job.priority,
            attempts=job.attempts,
        )
    if reaped.requeued or reaped.failed or missing:
        log.warning(
            "reaped jobs",
            extra={
                "requeued": [str(j.id) for j in reaped.requeued],
                "failed": [str(j) for j in reaped.failed],
                "re_enqueued": [str(j.id) for j in missing],
            },
        )
    return {"requeued": len(reaped.requeued), "failed": len(reaped.failed), "re_enqueued": len(missing)}


async def reaper_loop(
    settings: Settings, store: JobStore, redis: ArqRedis, live: Callable[[], LiveRuns] | None = None
) -> None:
    """Reap every REAP_EVERY_S; ``live`` says which runs are this worker's own (never reaped here)."""
    while True:
        try:
            await reap_stale_jobs(settings, store, redis, live() if live else None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reaping failed; trying again shortly")
        await asyncio.sleep(REAP_EVERY_S)
