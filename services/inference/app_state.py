"""The inference service's resources, made once in the app's lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.inference.auth import KeyChecker
from services.inference.impressions import ImpressionLog
from services.inference.metrics import InferenceMetrics
from services.inference.registry import ModelRegistry
from shared.config import Settings


@dataclass
class InferenceResources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    registry: ModelRegistry
    keys: KeyChecker
    metrics: InferenceMetrics
    impressions: ImpressionLog
    background: set[asyncio.Task[None]] = field(default_factory=set)


def get_resources(request: Request) -> InferenceResources:
    resources: InferenceResources = request.state.resources
    return resources
