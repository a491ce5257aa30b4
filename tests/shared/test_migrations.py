"""The schema is made only by migrations, both ways, and the models agree with it."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared import migrate
from shared.models import Base


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_on_empty_database(scratch_database: str) -> None:
    expected = set(Base.metadata.tables)

    await asyncio.to_thread(migrate.upgrade, scratch_database)
    assert await _tables(scratch_database) == expected | {"alembic_version"}

    await asyncio.to_thread(migrate.downgrade, scratch_database, "base")
    assert await _tables(scratch_database) == {"alembic_version"}

    await asyncio.to_thread(migrate.upgrade, scratch_database)
    assert await _tables(scratch_database) == expected | {"alembic_version"}


async def test_models_match_migrations(engine: AsyncEngine) -> None:
    def diff(sync_conn):  # type: ignore[no-untyped-def]
        ctx = MigrationContext.configure(
            sync_conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(ctx, Base.metadata)

    async with engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"models and migrations disagree: {changes}"


async def test_every_table_uses_the_naming_convention(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                    "WHERE n.nspname = 'public' AND conrelid <> 0"
                )
            )
        ).scalars()
        bad = [
            n for n in names if not n.startswith(("pk_", "fk_", "uq_", "ck_")) and n != "alembic_version_pkc"
        ]
    assert bad == []


async def test_audit_log_is_append_only(db: AsyncEngine) -> None:
    engine = db
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO audit_log (action, entity_type) VALUES ('test.create', 'test')"))
    for statement in ("UPDATE audit_log SET action = 'rewritten'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT action FROM audit_log"))).scalars().all() == ["test.create"]


async def test_audit_log_refuses_truncate(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO audit_log (action, entity_type) VALUES ('test.create', 'test')"))
    for statement in ("TRUNCATE audit_log", "TRUNCATE audit_log RESTART IDENTITY CASCADE"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.begin() as conn:
                await conn.execute(text(statement))
    async with db.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one() == 1
