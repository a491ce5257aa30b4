"""The trainer worker's health endpoint (/healthz, /readyz), served beside arq in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.http import infra_checks, setup_common

log = logging.getLogger("recforge.health")


def health_app(engine: AsyncEngine, redis: Any) -> FastAPI:
    app = FastAPI(title="RecForge Trainer", version="0.1.0")
    setup_common(app, lambda _: infra_checks(engine, redis))
    return app


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process (arq handles SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class BackgroundHealthServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._server.serve()
        except (OSError, SystemExit) as exc:  # uvicorn exits when the port is taken
            log.warning("health endpoint not started: %s", exc)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=5)
