"""arq worker settings for the trainer. Run with ``recforge worker``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import Any, ClassVar

import anyio
from arq import func
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.trainer.cancel import start_listening
from services.trainer.context import CONTEXT_KEY, WorkerContext, worker_context
from services.trainer.health import BackgroundHealthServer, health_app
from services.trainer.reaper import reaper_loop
from services.trainer.runner import run_training_job, sweep_disk
from services.trainer.store import JobStore
from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker
from shared.jobs import RUN_TRAINING_JOB
from shared.logging import warn_about_settings
from shared.storage import object_store

log = logging.getLogger("recforge.trainer")


# keep_result=0: the job's row is the record, so arq keeps no result, and a job id is free again as
# soon as its run returns (a job that waited for its project's slot is queued again under the same id)
TRAINING_FUNCTION = func(run_training_job, name=RUN_TRAINING_JOB, keep_result=0)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def startup(ctx: dict[str, Any]) -> None:
    """Make the worker's resources; ``ctx["settings"]`` may hold settings to use instead of the
    process's (tests pass their own)."""
    settings: Settings = ctx.get("settings") or get_settings()
    warn_about_settings(settings, log)
    await anyio.to_thread.run_sync(object_store(settings).check)  # fail at start, saying why
    engine = create_engine(settings, pool_size=4)
    wc = WorkerContext(
        settings=settings,
        engine=engine,
        redis=ctx["redis"],
        store=JobStore(create_sessionmaker(engine)),
        worker_id=worker_id(),
    )
    ctx[CONTEXT_KEY] = wc
    if settings.trainer_port:
        server = BackgroundHealthServer(
            health_app(engine, wc.redis, settings), settings.host, settings.trainer_port
        )
        await server.start()
        wc.health_server = server
    await sweep_disk(wc)  # what runs killed before this worker started left behind
    wc.background.append(asyncio.create_task(reaper_loop(settings, wc.store, wc.redis, wc.live_runs)))
    wc.background.append(await start_listening(wc))
    log.info("trainer worker started", extra={"worker_id": wc.worker_id})


async def shutdown(ctx: dict[str, Any]) -> None:
    if CONTEXT_KEY not in ctx:  # startup failed before it made anything
        return
    wc = worker_context(ctx)
    for task in wc.background:
        task.cancel()
    await asyncio.gather(*wc.background, return_exceptions=True)
    if wc.health_server is not None:
        await wc.health_server.stop()
    await wc.engine.dispose()
    log.info("trainer worker stopped", extra={"worker_id": wc.worker_id})


REDIS_FAULTS = (RedisConnectionError, RedisTimeoutError, OSError)
REDIS_RETRY_S = 1.0


class ResilientWorker(Worker):
    """An arq worker that outlives a Redis outage: arq's own poll loop ends the process at the first
    connection error, so a job running at that moment would be lost to its worker and resumed
    elsewhere. Here a poll that fails is logged and tried again; the job running goes on (its state
    is in Postgres), and a queue that came back empty is refilled by the reaper from Postgres."""

    redis_down_since: float | None = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_FAULTS as exc:
            if self.redis_down_since is None:
                self.redis_down_since = asyncio.get_running_loop().time()
                log.warning("Redis is unreachable; polling again every %.0f s: %s", REDIS_RETRY_S, exc)
            await asyncio.sleep(REDIS_RETRY_S)
            return
        if self.redis_down_since is not None:
            down = asyncio.get_running_loop().time() - self.redis_down_since
            log.info("Redis answers again after %.0f s", down)
            self.redis_down_since = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a slot (semaphore and counter) before it asks Redis for the job; a Redis error
        # there would keep the slot forever, and a worker with one slot would take no job again
        for job_id in job_ids:
            before = self.tasks.get(job_id.decode())
            try:
                await super().start_jobs([job_id])
            except REDIS_FAULTS:
                if self.tasks.get(job_id.decode()) is before:
                    self.job_counter -= 1
                    self.sem.release()
                raise


def run(settings: Settings, *, burst: bool = False) -> None:
    """Run a trainer worker in this process until it is told to stop."""
    from arq.worker import get_kwargs

    from shared.jobs import redis_settings

    worker = ResilientWorker(
        **{
            **get_kwargs(WorkerSettings),  # type: ignore[arg-type]
            "redis_settings": redis_settings(settings),
            "queue_name": settings.queue_name,
            "burst": burst,
        }
    )
    worker.run()


class WorkerSettings:
    """Redis settings and the queue name are passed by `recforge worker` from the process settings."""

    functions: ClassVar[list[Any]] = [TRAINING_FUNCTION]
    on_startup = startup
    on_shutdown = shutdown
    health_check_interval = 10
    # Fine-tunes run for many minutes: never let arq's 300 s default kill them.
    job_timeout = timedelta(hours=12)
    # Runs are counted in Postgres (attempts, RECFORGE_MAX_JOB_ATTEMPTS); arq only has to keep trying.
    max_tries = 100
    allow_abort_jobs = True
    max_jobs = 1
