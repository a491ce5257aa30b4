"""The worker's resources, typed: made once in arq's on_startup and read by every job it runs."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.trainer.control import JobControl
from services.trainer.store import JobStore, LiveRuns
from shared.config import Settings

if TYPE_CHECKING:
    from services.trainer.health import BackgroundHealthServer

CONTEXT_KEY = "recforge"


@dataclass
class WorkerContext:
    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis  # arq's client: the queue, pub/sub and plain Redis commands
    store: JobStore
    worker_id: str
    # the jobs this worker runs now, so a cancellation heard on Redis reaches their training thread
    running: dict[uuid.UUID, JobControl] = field(default_factory=dict)
    background: list[asyncio.Task[None]] = field(default_factory=list)  # reaper, cancel listener
    health_server: BackgroundHealthServer | None = None

    def live_runs(self) -> LiveRuns:
        return LiveRuns(self.worker_id, frozenset(self.running))


def worker_context(ctx: dict[str, Any]) -> WorkerContext:
    """The typed context inside arq's ctx dict."""
    context: WorkerContext = ctx[CONTEXT_KEY]
    return context
