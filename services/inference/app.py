"""The inference service application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.inference.registry import ModelRegistry
from shared.config import Settings, get_settings
from shared.db import create_engine, create_sessionmaker
from shared.http import Check, infra_checks, setup_common
from shared.redis import create_redis

VERSION = "0.1.0"


@dataclass(frozen=True)
class InferenceResources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    registry: ModelRegistry


def get_resources(request: Request) -> InferenceResources:
    resources: InferenceResources = request.state.resources
    return resources


def _checks(request: Request) -> Mapping[str, Check]:
    resources = get_resources(request)

    async def models_loaded() -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            missing = await resources.registry.missing_versions(session)
        if missing:
            raise RuntimeError(f"deployed model versions not loaded yet: {sorted(map(str, missing))}")
        return {"loaded": len(resources.registry.loaded_versions)}

    return {**infra_checks(resources.engine, resources.redis), "models": models_loaded}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, InferenceResources]]:
        engine = create_engine(settings)
        redis = create_redis(settings)
        resources = InferenceResources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
            registry=ModelRegistry(),
        )
        try:
            yield {"resources": resources}
        finally:
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="RecForge Inference",
        version=VERSION,
        summary="Low-latency recommendations, scores, labels, embeddings and reranking over ONNX models.",
        lifespan=lifespan,
    )
    setup_common(app, _checks)
    return app
