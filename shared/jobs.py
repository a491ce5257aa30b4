"""The api <-> trainer contract: queue, job names, job ids and Redis channels."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis, RedisSettings

from shared.config import Settings

RUN_TRAINING_JOB = "run_training_job"
DEPLOYMENTS_CHANNEL = "recforge:deployments"
# The api publishes a running job's id here once its cancellation is committed; every trainer worker
# listens, and the one running the job stops it at once (heartbeats also read the row, as a fallback).
CANCEL_CHANNEL = "recforge:training-jobs:cancel"

# arq runs the job with the lowest score first among those due; a score in the past puts a job
# ahead of every job enqueued later with a lower priority (within PRIORITY_STEP of waiting).
PRIORITY_STEP = timedelta(days=30)
JOB_EXPIRES = PRIORITY_STEP * 10 + timedelta(days=7)


def arq_job_id(training_job_id: uuid.UUID, retries: int = 0, attempts: int = 0) -> str:
    """A fixed arq id per run of a training job: arq refuses a second enqueue of an id it holds (queued or
    running), so a double submission can never run twice, while a retry (a new run) and a resumption
    after a lost worker (a new attempt) get new ids, which a dead worker's claim on the old id cannot
    block."""
    base = f"training-job:{training_job_id}:{retries}"
    return f"{base}:a{attempts}" if attempts else base


async def enqueue_training_job(
    redis: ArqRedis,
    queue_name: str,
    training_job_id: uuid.UUID,
    *,
    retries: int,
    priority: int,
    attempts: int = 0,
) -> bool:
    """Put a committed training job on the queue. Priority 9 runs first, 0 last; FIFO within one.

    False when arq already holds this id (queued, or running)."""
    run_at = datetime.now(UTC) - PRIORITY_STEP * priority
    job = await redis.enqueue_job(
        RUN_TRAINING_JOB,
        str(training_job_id),
        _job_id=arq_job_id(training_job_id, retries, attempts),
        _queue_name=queue_name,
        _defer_until=run_at,
        _expires=JOB_EXPIRES,
    )
    return job is not None


def progress_channel(training_job_id: uuid.UUID) -> str:
    return f"recforge:training-jobs:{training_job_id}:progress"


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.resolved_redis_url())


def pipeline_channel(project_id: uuid.UUID) -> str:
    """Where the api announces each change of a project's pipeline runs (their event stream)."""
    return f"recforge:pipelines:{project_id}:runs"
