"""The trainer's queue in Prometheus format (GET /metrics on the worker's health port): what an
autoscaler (KEDA's Prometheus scaler, an HPA on external metrics) needs to size the pool of workers.

- ``recforge_trainer_jobs_ready``: jobs in the arq queue that a worker could start now. arq keeps
  deferred jobs and jobs already running in the same sorted set as the waiting ones (ZCARD over-counts
  both), so ready = score at or before now, and no in-progress key.
- ``recforge_trainer_jobs_deferred``: jobs in the queue due later (a retry's back-off).
- ``recforge_trainer_jobs_running``: jobs a worker runs now (PostgreSQL, the jobs' source of truth).
- ``recforge_trainer_jobs_waiting{project, device}``: queued jobs per project and the device they asked
  for (``cuda`` jobs are what a GPU pool scales on).

Every replica answers the same figures (they read the shared queue and database): an autoscaler's query
takes ``max`` over them, not ``sum``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Project, TrainingJob
from shared.models.enums import JobStatus

# One round trip, atomic: the due jobs, less those a worker holds.
_READY = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ready = 0
for _, id in ipairs(due) do
  if redis.call('EXISTS', ARGV[2] .. id) == 0 then ready = ready + 1 end
end
return {ready, redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')}
"""


@dataclass(frozen=True)
class QueueFigures:
    ready: int
    deferred: int
    running: int
    waiting: dict[tuple[str, str], int]  # (project slug, device) -> queued jobs


async def queue_counts(redis: ArqRedis, queue_name: str, now_ms: int | None = None) -> tuple[int, int]:
    """(ready, deferred) in the arq queue ``queue_name``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ready, deferred = await redis.eval(_READY, 1, queue_name, str(now_ms), in_progress_key_prefix)  # type: ignore[misc]
    return int(ready), int(deferred)


async def read(session: AsyncSession, redis: ArqRedis, queue_name: str) -> QueueFigures:
    ready, deferred = await queue_counts(redis, queue_name)
    running = await session.scalar(
        select(func.count()).select_from(TrainingJob).where(TrainingJob.status == JobStatus.running.value)
    )
    device = func.coalesce(TrainingJob.device, "auto")
    rows = await session.execute(
        select(Project.slug, device, func.count())
        .join(Project, Project.id == TrainingJob.project_id)
        .where(TrainingJob.status == JobStatus.queued.value)
        .group_by(Project.slug, device)
    )
    waiting = {(slug, str(dev)): int(n) for slug, dev, n in rows.tuples()}
    return QueueFigures(ready=ready, deferred=deferred, running=int(running or 0), waiting=waiting)


class _Snapshot(Collector):
    def __init__(self, figures: QueueFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self.figures
        yield GaugeMetricFamily(
            "recforge_trainer_jobs_ready",
            "Queued jobs a worker could start now (due, not held).",
            value=f.ready,
        )
        yield GaugeMetricFamily(
            "recforge_trainer_jobs_deferred", "Queued jobs due later (a retry's back-off).", value=f.deferred
        )
        yield GaugeMetricFamily("recforge_trainer_jobs_running", "Jobs running now.", value=f.running)
        waiting = GaugeMetricFamily(
            "recforge_trainer_jobs_waiting",
            "Queued jobs per project and the device they asked for (auto, cpu, cuda).",
            labels=["project", "device"],
        )
        for (project, device), count in sorted(f.waiting.items()):
            waiting.add_metric([project, device], count)
        yield waiting


def registry_of(figures: QueueFigures) -> CollectorRegistry:
    """A registry holding one scrape's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(figures))
    return registry
