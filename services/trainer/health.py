"""The trainer worker's health endpoints (/healthz, /readyz) and its queue metrics (/metrics), served
beside arq in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.trainer import queue_metrics
from shared.config import Settings, get_settings
from shared.db import create_sessionmaker
from shared.errors import UNKNOWN_KEY, AppError, Forbidden, Unauthorized
from shared.http import infra_checks, setup_common
from shared.models import ApiKey, User
from shared.models.enums import KeyRole
from shared.security import hash_api_key, key_refusal

log = logging.getLogger("recforge.health")


def health_app(engine: AsyncEngine, redis: Any, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    sessionmaker = create_sessionmaker(engine)
    app = FastAPI(title="RecForge Trainer", version="0.1.0")
    setup_common(app, lambda _: infra_checks(engine, redis))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """The queue in Prometheus format (services.trainer.queue_metrics), for the metrics token
        (RECFORGE_METRICS_TOKEN) or an admin key: the series name the projects."""
        async with sessionmaker() as session:
            refusal = await _metrics_refusal(session, settings, request.headers.get("authorization") or "")
            if refusal is not None:
                raise refusal
            figures = await queue_metrics.read(session, redis, settings.queue_name)
        return Response(generate_latest(queue_metrics.registry_of(figures)), media_type=CONTENT_TYPE_LATEST)

    return app


async def _metrics_refusal(session: AsyncSession, settings: Settings, authorization: str) -> AppError | None:
    token = settings.metrics_token
    if token and hmac.compare_digest(authorization.encode(), f"Bearer {token.get_secret_value()}".encode()):
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key:
        return Unauthorized(
            "metrics are read with the metrics token (RECFORGE_METRICS_TOKEN) or an admin key"
        )
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == hash_api_key(key, settings.secret_key.get_secret_value()))
        )
    ).first()
    if row is None:
        return Unauthorized(UNKNOWN_KEY)
    api_key, user = row
    why = key_refusal(
        revoked_at=api_key.revoked_at, expires_at=api_key.expires_at, user_active=user.is_active,
        now=datetime.now(UTC),
    )  # fmt: skip
    if why is not None:
        return Unauthorized(why)
    if api_key.role != KeyRole.admin.value:
        return Forbidden("metrics are read with the metrics token (RECFORGE_METRICS_TOKEN) or an admin key")
    return None


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
