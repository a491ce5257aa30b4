"""arq worker settings for the trainer. Run with ``recforge worker``."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any, ClassVar

from arq import cron
from fastapi import FastAPI
from sqlalchemy import func, update

from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker, unit_of_work
from shared.healthserver import BackgroundHealthServer
from shared.http import infra_checks, setup_common
from shared.models import TrainingJob
from shared.models.enums import JobStatus

log = logging.getLogger("recforge.trainer")

# A running job writes a heartbeat at least every few seconds; past this it is presumed dead.
STALE_HEARTBEAT = timedelta(minutes=2)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def health_app(ctx: dict[str, Any]) -> FastAPI:
    app = FastAPI(title="RecForge Trainer", version="0.1.0")

    setup_common(app, lambda _: infra_checks(ctx["engine"], ctx["redis"]))
    return app


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = get_settings()
    engine = create_engine(settings, pool_size=4)
    ctx.update(
        settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine), worker_id=worker_id()
    )
    if settings.trainer_port:
        server = BackgroundHealthServer(health_app(ctx), settings.host, settings.trainer_port)
        await server.start()
        ctx["health_server"] = server
    log.info("trainer worker started", extra={"worker_id": ctx["worker_id"]})


async def shutdown(ctx: dict[str, Any]) -> None:
    if "health_server" in ctx:
        await ctx["health_server"].stop()
    await ctx["engine"].dispose()
    log.info("trainer worker stopped", extra={"worker_id": ctx.get("worker_id")})


async def reap_stale_jobs(ctx: dict[str, Any]) -> int:
    """Fail running jobs whose worker stopped sending heartbeats, so none stays running forever."""
    async with unit_of_work(ctx["sessionmaker"]) as session:
        result = await session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.status == JobStatus.running.value,
                TrainingJob.heartbeat_at < func.now() - STALE_HEARTBEAT,
            )
            .values(
                status=JobStatus.failed.value,
                error=f"worker vanished: no heartbeat for {int(STALE_HEARTBEAT.total_seconds())} s",
                finished_at=func.now(),
            )
            .returning(TrainingJob.id)
        )
        reaped = [str(row[0]) for row in result]
    if reaped:
        log.warning("reaped stale jobs", extra={"job_ids": reaped})
    return len(reaped)


class WorkerSettings:
    """Redis settings and the queue name are passed by `recforge worker` from the process settings."""

    functions: ClassVar[list[Any]] = []
    cron_jobs: ClassVar[list[Any]] = [
        cron(reap_stale_jobs, second={0, 30}, run_at_startup=True, unique=True, timeout=60)
    ]
    on_startup = startup
    on_shutdown = shutdown
    health_check_interval = 10
    # Fine-tunes run for many minutes: never let arq's 300 s default kill them.
    job_timeout = timedelta(hours=12)
    max_tries = 3
    allow_abort_jobs = True
    max_jobs = 1
