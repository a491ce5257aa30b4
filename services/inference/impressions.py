"""What the inference service served, written to Postgres off the hot path.

A request hands its impression to a bounded in-memory buffer and goes on: it never waits for the
database. A background writer drains the buffer in batches (up to ``impression_batch`` rows per COPY,
at least every ``impression_flush_s``). When the buffer is full (the database is slow or down) a new
impression is dropped and counted, never waited for; a batch the database refuses is tried again
``WRITE_ATTEMPTS`` times before it is dropped and counted. At shutdown what is buffered is written.

The same writer deletes impressions older than each project's ``impression_retention_days``, at most
``RETENTION_BATCH`` rows per statement, once per ``RETENTION_EVERY_S`` across all replicas (a Redis lock
makes the tick fire once however many run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.metrics import InferenceMetrics
from shared.config import Settings
from shared.models import Impression

log = logging.getLogger("recforge.inference")

WRITE_ATTEMPTS = 3
RETENTION_EVERY_S = 3600.0
RETENTION_BATCH = 10_000
RETENTION_LOCK = "recforge:impressions:retention"
CLOSE_WITHIN_S = 10.0
COLUMNS = [
    "project_id", "request_id", "endpoint", "model_version_id", "reranker_version_id", "arm", "query",
    "user_id", "product_ids", "latency_ms", "explored", "served_at",
]  # fmt: skip


@dataclass(frozen=True)
class Served:
    """One answered request, as its impression row."""

    project_id: uuid.UUID
    request_id: str
    endpoint: str
    model_version_id: str | None
    reranker_version_id: str | None
    arm: str
    query: str | None
    user_id: str | None
    product_ids: list[str]
    latency_ms: float
    explored: bool = False
    served_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def record(self) -> tuple[Any, ...]:
        """The impression's values in COLUMNS' order."""
        return (
            self.project_id,
            self.request_id,
            self.endpoint,
            uuid.UUID(self.model_version_id) if self.model_version_id else None,
            uuid.UUID(self.reranker_version_id) if self.reranker_version_id else None,
            self.arm,
            self.query,
            self.user_id,
            self.product_ids,
            round(self.latency_ms, 3),
            self.explored,
            self.served_at,
        )


class ImpressionLog:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
        metrics: InferenceMetrics,
    ) -> None:
        self.enabled = settings.impression_logging
        self._sessionmaker = sessionmaker
        self._redis = redis
        self._metrics = metrics
        self._batch = settings.impression_batch
        self._flush_s = settings.impression_flush_s
        self._buffer: asyncio.Queue[Served] = asyncio.Queue(maxsize=settings.impression_buffer)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def record(self, served: Served) -> None:
        """Buffer the impression; drop it (counted) when the buffer is full. Never waits."""
        if not self.enabled:
            return
        try:
            self._buffer.put_nowait(served)
        except asyncio.QueueFull:
            self._metrics.impressions_dropped.labels(reason="buffer_full").inc()
        self._metrics.impressions_buffered.set(self._buffer.qsize())

    async def start(self) -> None:
        if self.enabled:
            self._tasks = [
                asyncio.create_task(self._write_loop()),
                asyncio.create_task(self._retention_loop()),
            ]

    async def close(self) -> None:
        """Write what is buffered (for at most CLOSE_WITHIN_S), then stop."""
        self._stopping = True
        if self._tasks:
            writer, *others = self._tasks
            for task in others:
                task.cancel()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(writer, CLOSE_WITHIN_S)
            await asyncio.gather(*others, return_exceptions=True)
        left = self._buffer.qsize()
        if left:
            self._metrics.impressions_dropped.labels(reason="shutdown").inc(left)
            log.warning("impressions not written at shutdown", extra={"dropped": left})

    async def flush(self) -> None:
        """Write everything buffered now (tests and shutdown)."""
        while not self._buffer.empty():
            await self._write(self._take(self._batch))

    def _take(self, most: int) -> list[Served]:
        rows: list[Served] = []
        while len(rows) < most and not self._buffer.empty():
            rows.append(self._buffer.get_nowait())
        return rows

    async def _write_loop(self) -> None:
        while True:
            if self._buffer.empty():
                if self._stopping:
                    return
                try:
                    first = await asyncio.wait_for(self._buffer.get(), self._flush_s)
                except TimeoutError:
                    continue
                if self._buffer.qsize() + 1 < self._batch and not self._stopping:
                    await asyncio.sleep(self._flush_s)  # let a batch gather
                await self._write([first, *self._take(self._batch - 1)])
            else:
                await self._write(self._take(self._batch))

    async def _write(self, batch: list[Served]) -> None:
        if not batch:
            return
        records = [served.record() for served in batch]

        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                # COPY, not INSERT: a batch costs the event loop (which answers the requests) little
                async with self._sessionmaker() as session:
                    connection = await session.connection()
                    raw = await connection.get_raw_connection()
                    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                        Impression.__tablename__, records=records, columns=COLUMNS
                    )
                    await session.commit()
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS:
                    self._metrics.impressions_dropped.labels(reason="database").inc(len(records))
                    log.error(
                        "impressions dropped: the database refused them",
                        extra={"dropped": len(records), "error": f"{type(exc).__name__}: {exc}"[:300]},
                    )
                    return
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                self._metrics.impressions_written.inc(len(records))
                self._metrics.impressions_buffered.set(self._buffer.qsize())
                return

    async def _retention_loop(self) -> None:
        while True:
            try:
                if await self._redis.set(RETENTION_LOCK, "1", nx=True, ex=int(RETENTION_EVERY_S * 0.9)):
                    await delete_expired(self._sessionmaker)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deleting old impressions failed; trying again at the next tick", exc_info=True)
            await asyncio.sleep(RETENTION_EVERY_S)


async def delete_expired(
    sessionmaker: async_sessionmaker[AsyncSession], batch: int = RETENTION_BATCH, pause_s: float = 0.05
) -> int:
    """Delete impressions older than their project's retention, ``batch`` rows per statement (short
    transactions, no long lock); the number deleted."""
    deleted = 0
    started = time.monotonic()
    while True:
        async with sessionmaker() as session:
            found = await session.execute(
                text(
                    "DELETE FROM impressions WHERE id IN ("
                    " SELECT i.id FROM impressions i JOIN projects p ON p.id = i.project_id"
                    " WHERE i.served_at < now() - make_interval(days => p.impression_retention_days)"
                    " LIMIT :batch)"
                ),
                {"batch": batch},
            )
            await session.commit()
        count = int(getattr(found, "rowcount", 0) or 0)
        deleted += count
        if count < batch:
            break
        await asyncio.sleep(pause_s)
    if deleted:
        log.info(
            "deleted expired impressions",
            extra={"deleted": deleted, "seconds": round(time.monotonic() - started, 2)},
        )
    return deleted
