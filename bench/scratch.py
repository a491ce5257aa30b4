"""A scratch database for a benchmark: made beside the one named, migrated, dropped at the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import URL, make_url

from shared.config import to_async_url
from shared.migrate import upgrade


@asynccontextmanager
async def scratch_database(database_url: str, *, keep: bool = False) -> AsyncIterator[URL]:
    """The URL of a new, migrated database on the server of ``database_url`` (dropped after the block
    unless ``keep``)."""
    url = make_url(database_url)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"recforge_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    scratch = url.set(database=name)
    try:
        # alembic runs its own event loop: in a thread, beside this one
        await asyncio.to_thread(upgrade, to_async_url(scratch.render_as_string(hide_password=False)))
        yield scratch
    finally:
        if keep:
            print(f"kept the database {name}")
        else:
            connection = await asyncpg.connect(admin)
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await connection.close()
