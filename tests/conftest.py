"""Real PostgreSQL and Redis for every test: no mocks of either.

The servers come from RECFORGE_TEST_DATABASE_URL / RECFORGE_TEST_REDIS_URL, else the ones on
127.0.0.1:5432 and :6379, else embedded ones started for the session. Each session (each xdist worker)
migrates a database of its own; each test starts from empty tables and an empty Redis database."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from services.cli import embedded
from shared.config import Environment, LogFormat, Settings, to_async_url
from shared.db import create_engine, create_sessionmaker
from shared.models import Base
from tests.support.processes import CLI, cli_env, free_port, wait_ready

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Admin URL of a PostgreSQL server and URL of a Redis database."""
    pg = os.environ.get("RECFORGE_TEST_DATABASE_URL")
    redis_url = os.environ.get("RECFORGE_TEST_REDIS_URL")
    started: list[str] = []
    data_dir = tmp_path_factory.mktemp("embedded")
    if not pg:
        if _tcp_open("127.0.0.1", 5432):
            pg = DEFAULT_PG
        else:
            pg = embedded.start_postgres(data_dir).replace("/recforge?", "/postgres?")
            started.append("postgres")
    if not redis_url:
        if _tcp_open("127.0.0.1", 6379):
            redis_url = DEFAULT_REDIS
        else:
            redis_url = embedded.start_redis(data_dir)
            started.append("redis")
    yield {"postgres": pg, "redis": redis_url}
    if "redis" in started:
        embedded.stop_redis(data_dir)
    if "postgres" in started:
        embedded.stop_postgres(data_dir)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(to_async_url(url)).set(database=name).render_as_string(hide_password=False)


async def _admin_execute(admin_url: str, *statements: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(to_async_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def empty_database(servers: dict[str, str]) -> AsyncIterator[str]:
    """A factory-fresh database URL, dropped at the end of the session."""
    name = f"recforge_test_{uuid.uuid4().hex[:10]}"
    await _admin_execute(servers["postgres"], f'CREATE DATABASE "{name}"')
    yield _with_database(servers["postgres"], name)
    await _admin_execute(servers["postgres"], f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def scratch_database(servers: dict[str, str]) -> AsyncIterator[str]:
    """An empty database of its own, for tests that migrate up and down."""
    name = f"recforge_scratch_{uuid.uuid4().hex[:10]}"
    await _admin_execute(servers["postgres"], f'CREATE DATABASE "{name}"')
    yield _with_database(servers["postgres"], name)
    await _admin_execute(servers["postgres"], f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_url(empty_database: str) -> str:
    import asyncio

    from shared import migrate

    # Alembic's env runs its own event loop: keep it off this one.
    await asyncio.to_thread(migrate.upgrade, empty_database)
    return empty_database


@pytest.fixture(scope="session")
def settings(
    database_url: str, servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        env=Environment.test,
        database_url=database_url,
        redis_url=servers["redis"],
        data_dir=tmp_path_factory.mktemp("data"),
        log_format=LogFormat.console,
        queue_name=f"recforge:test:{uuid.uuid4().hex[:8]}",
        model_roots=str(tmp_path_factory.getbasetemp()),  # the tiny models tests train from
        # tests drive the loop's ticks themselves (tests/services/api/test_pipelines*.py); the
        # end-to-end test runs a stack whose controller ticks on its own
        pipeline_controller=False,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
async def db(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """The test database with every table empty, and an empty Redis database."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        # the audit log refuses TRUNCATE by trigger; triggers do not fire for this test-only reset
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    from redis.asyncio import Redis

    client = Redis.from_url(settings.resolved_redis_url())
    await client.flushdb()
    await client.aclose()
    return engine


@pytest.fixture
async def session(
    db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@asynccontextmanager
async def _client_for(app: Any, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    import httpx
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
async def api_client(db: AsyncEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from services.api.app import create_app

    async with _client_for(create_app(settings), "http://api") as client:
        yield client


@pytest.fixture
async def inference_client(db: AsyncEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from services.inference.app import create_app

    async with _client_for(create_app(settings), "http://inference") as client:
        yield client


def _cli_env(settings: Settings) -> dict[str, str]:
    from tests.support.processes import cli_env

    return cli_env(settings, RECFORGE_QUEUE_NAME=settings.queue_name)


@pytest.fixture
def api_server(settings: Settings, db: object) -> Iterator[str]:
    """`recforge api` in a subprocess, on the test database."""
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "api", "--port", str(port)],
        env=cli_env(settings, RECFORGE_QUEUE_NAME=settings.queue_name),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(url, process):
            raise AssertionError("the API did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
