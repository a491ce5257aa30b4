"""arq worker settings for the trainer. Run with ``recforge worker``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import Any, ClassVar

from arq import func

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
        server = BackgroundHealthServer(health_app(engine, wc.redis), settings.host, settings.trainer_port)
        await server.start()
        wc.health_server = server
    await sweep_disk(wc)  # what runs killed before this worker started left behind
    wc.background.append(asyncio.create_task(reaper_loop(settings, wc.store, wc.redis)))
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
