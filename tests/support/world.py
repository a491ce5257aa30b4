"""People, projects and keys made through the API, and calls made as one of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    """Two projects with different members, each person with a key, made through the API."""

    client: httpx.AsyncClient
    admin: str
    keys: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessionmaker: async_sessionmaker[AsyncSession] | None = None  # for rows only services write

    def as_(self, who: str) -> dict[str, str]:
        return bearer(self.admin if who == "admin" else self.keys[who])

    async def call(self, who: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, url, headers=self.as_(who), **kwargs)
