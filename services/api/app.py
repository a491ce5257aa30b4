"""The project API application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
from arq import create_pool
from fastapi import FastAPI, Request
from starlette.types import Scope

from services.api.audit.router import router as audit_router
from services.api.auth.router import router as auth_router
from services.api.console import web as console_web
from services.api.console.router import router as console_router
from services.api.datasets.cleanup import sweep_imports
from services.api.datasets.router import router as datasets_router
from services.api.deployments.router import router as deployments_router
from services.api.deps import ApiResources, get_resources
from services.api.feedback.rollups import rollup_loop
from services.api.feedback.router import router as feedback_router
from services.api.integrations.router import router as integrations_router
from services.api.integrations.sync import sync_loop as jira_sync_loop
from services.api.labeling.router import router as labeling_router
from services.api.milestones.router import router as milestones_router
from services.api.pipelines.controller import controller_loop
from services.api.pipelines.router import router as pipelines_router
from services.api.projects.router import router as projects_router
from services.api.tasks.router import router as tasks_router
from services.api.training.router import router as training_router
from services.api.webhooks.delivery import delivery_loop
from services.api.webhooks.router import router as webhooks_router
from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker
from shared.http import BodyLimit, Check, infra_checks, setup_common
from shared.jobs import redis_settings
from shared.logging import warn_about_settings
from shared.storage import object_store

VERSION = "0.1.0"
log = logging.getLogger("recforge.api")
API_PREFIX = "/api/v1"


# the API's dataset upload and the console's import form
_UPLOAD = re.compile(rf"{API_PREFIX}/projects/[^/]+/datasets|/ui/projects/[^/]+/data")


def _is_upload(scope: Scope) -> bool:
    return scope["method"] == "POST" and _UPLOAD.fullmatch(scope["path"]) is not None


def _checks(request: Request) -> Mapping[str, Check]:
    resources = get_resources(request)
    return infra_checks(resources.engine, resources.redis)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ApiResources]]:
        warn_about_settings(settings, log)
        await anyio.to_thread.run_sync(object_store(settings).check)  # fail at start, saying why
        engine = create_engine(settings)
        redis = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
        resources = ApiResources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
            import_limiter=anyio.CapacityLimiter(settings.max_concurrent_imports),
            event_streams=anyio.CapacityLimiter(settings.max_event_streams),
        )
        try:
            await sweep_imports(settings, resources.sessionmaker)
        except Exception:  # a sweep is housekeeping: the api serves without it
            log.warning("could not sweep abandoned import files", exc_info=True)
        loops = [asyncio.create_task(rollup_loop(resources))]
        if settings.pipeline_controller:  # the continuous-learning loop, and what it tells others
            loops += [
                asyncio.create_task(controller_loop(resources)),
                asyncio.create_task(delivery_loop(resources)),
                asyncio.create_task(jira_sync_loop(resources)),
            ]
        try:
            yield {"resources": resources}
        finally:
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="RecForge API",
        version=VERSION,
        summary="Projects, people, datasets, training jobs, model versions and deployments.",
        lifespan=lifespan,
    )
    # dataset uploads stream to disk under their own limit (RECFORGE_MAX_UPLOAD_MB)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, exempt=_is_upload)
    setup_common(app, _checks)
    for router in (
        auth_router,
        projects_router,
        tasks_router,
        milestones_router,
        audit_router,
        datasets_router,
        training_router,
        deployments_router,
        feedback_router,
        labeling_router,
        integrations_router,
        pipelines_router,
        webhooks_router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(console_router)
    console_web.install(app)
    return app
