"""The api <-> trainer contract: queue, job names, job ids and Redis channels."""

from __future__ import annotations

import uuid

from arq.connections import RedisSettings

from shared.config import Settings

RUN_TRAINING_JOB = "run_training_job"
DEPLOYMENTS_CHANNEL = "recforge:deployments"


def arq_job_id(training_job_id: uuid.UUID) -> str:
    """A fixed arq id per training job: arq refuses a second enqueue of the same id."""
    return f"training-job:{training_job_id}"


def progress_channel(training_job_id: uuid.UUID) -> str:
    return f"recforge:training-jobs:{training_job_id}:progress"


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.resolved_redis_url())
