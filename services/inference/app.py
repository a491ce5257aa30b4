"""The inference service application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import onnxruntime as ort
from fastapi import FastAPI, Request

from services.inference.admission import AdaptiveConcurrency, KeyFirst
from services.inference.app_state import InferenceResources, get_resources
from services.inference.auth import KeyChecker
from services.inference.impressions import ImpressionLog
from services.inference.metrics import InferenceMetrics
from services.inference.openai_shape import OpenAIErrors
from services.inference.registry import ModelRegistry
from services.inference.router import BULK_PATHS, POST_PATHS, router
from services.inference.timing import ServerTiming
from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker
from shared.http import BodyLimit, Check, NotReady, infra_checks, setup_common
from shared.logging import warn_about_settings
from shared.redis import create_redis
from shared.storage import object_store

VERSION = "0.1.0"
log = logging.getLogger("recforge.inference")


def _checks(request: Request) -> Mapping[str, Check]:
    resources = get_resources(request)

    async def models_loaded() -> dict[str, Any]:
        """Ready once the deployments were read and loaded at least once: a version that fails to load
        fails its own project's requests (503), not the replica; admins see which at /models."""
        registry = resources.registry
        if not registry.refreshed:
            async with resources.sessionmaker() as session:
                if await registry.deploys_anything(session):
                    raise NotReady("loading the deployed model versions")
        return {"loaded": len(registry.loaded_versions), "failed": registry.failures}

    return {**infra_checks(resources.engine, resources.redis), "models": models_loaded}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, InferenceResources]]:
        warn_about_settings(settings, log)
        await anyio.to_thread.run_sync(object_store(settings).check)  # fail at start, saying why
        engine = create_engine(settings)
        redis = create_redis(settings)
        sessionmaker = create_sessionmaker(engine)
        metrics = InferenceMetrics()
        registry = ModelRegistry(
            settings,
            sessionmaker,
            redis,
            observe=metrics.observe_batch,
            forget=metrics.forget,
            on_catalog=metrics.catalog_index,
        )
        resources = InferenceResources(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            redis=redis,
            registry=registry,
            keys=KeyChecker(sessionmaker, settings.secret_key.get_secret_value()),
            metrics=metrics,
            impressions=ImpressionLog(settings, sessionmaker, redis, metrics),
        )
        log.info("onnxruntime providers", extra={"available": ort.get_available_providers()})
        await registry.start()
        await resources.impressions.start()
        try:
            yield {"resources": resources}
        finally:
            await resources.impressions.close()
            await registry.close()
            if resources.background:
                await asyncio.gather(*resources.background, return_exceptions=True)
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="RecForge Inference",
        version=VERSION,
        summary="Low-latency recommendations, scores, labels, embeddings and reranking over ONNX models.",
        lifespan=lifespan,
    )
    app.include_router(router)
    # outermost first: Server-Timing, /v1 errors in OpenAI's shape, request id and log, outages as 503,
    # the adaptive ceiling, the key, the body's size
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(KeyFirst, paths=POST_PATHS)
    app.add_middleware(
        AdaptiveConcurrency, maximum=settings.max_in_flight, routes=POST_PATHS - BULK_PATHS, bulk=BULK_PATHS
    )
    setup_common(app, _checks)
    app.add_middleware(OpenAIErrors)
    app.add_middleware(ServerTiming, paths=POST_PATHS)
    return app
