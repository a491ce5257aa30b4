"""Online metrics in SQL: per hour and model version, from the impressions and the events tied to them
by request id, as sums that add up over any window (services.api.feedback.service).

Each impression row is one answered request; an event counts for it when it carries the request's id
(any number of identical events count once: one click per product and request, and so on). Hours the
service has closed are kept in ``online_rollups``; the rest are computed from the raw tables."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import OnlineRollup, OnlineRollupHour

MAX_RANK = 100  # clicks are counted per rank down to here (CTR@k takes k <= 100)
# latency histogram: log-spaced buckets from 0.05 ms to 60 s, each 9% wider than the one before
LATENCY_LOW_MS, LATENCY_HIGH_MS, LATENCY_BUCKETS = 0.05, 60_000.0, 160
HISTOGRAM_SIZE = LATENCY_BUCKETS + 2  # below the lowest edge, the buckets, at or above the highest

# {version}: the model version the rows are grouped by; {where}: the role's filter
_HOURLY = """
WITH imp AS (
    SELECT i.id, i.request_id, {version} AS version_id, i.product_ids, i.latency_ms,
           date_trunc('hour', i.served_at, 'UTC') AS hour
    FROM impressions i
    WHERE i.project_id = :project_id AND i.served_at >= :start AND i.served_at < :end {where}
),
ev AS (
    SELECT DISTINCT e.request_id, e.product_id, e.event_type
    FROM events e
    WHERE e.project_id = :project_id AND e.event_type IN ('click', 'cart', 'purchase')
      AND e.request_id IN (SELECT request_id FROM imp)
),
per_request AS (
    SELECT imp.hour, imp.version_id,
           width_bucket(ln(greatest(imp.latency_ms, 1e-9)), ln(:low), ln(:high), :buckets) AS latency_bucket,
           cardinality(imp.product_ids) AS shown,
           count(*) FILTER (WHERE ev.event_type = 'click') AS clicks,
           count(*) FILTER (WHERE ev.event_type = 'cart') AS carts,
           count(*) FILTER (WHERE ev.event_type = 'purchase') AS purchases,
           min(array_position(imp.product_ids, ev.product_id)) FILTER (WHERE ev.event_type = 'click')
               AS best_click,
           array_agg(array_position(imp.product_ids, ev.product_id)) FILTER (
               WHERE ev.event_type = 'click' AND array_position(imp.product_ids, ev.product_id) <= :max_rank
           ) AS click_ranks
    FROM imp LEFT JOIN ev ON ev.request_id = imp.request_id
    GROUP BY imp.id, imp.hour, imp.version_id, imp.latency_ms, imp.product_ids
),
latency AS (
    SELECT hour, version_id, latency_bucket, count(*) AS n FROM per_request GROUP BY 1, 2, 3
),
ranks AS (
    SELECT hour, version_id, rank, count(*) AS n
    FROM per_request, unnest(click_ranks) AS rank GROUP BY 1, 2, 3
)
SELECT t.hour, t.version_id,
       count(*) AS requests, sum(t.shown) AS impressions, sum(t.clicks) AS clicks, sum(t.carts) AS carts,
       sum(t.purchases) AS purchases, count(*) FILTER (WHERE t.clicks = 0) AS zero_click,
       coalesce(sum(1.0 / t.best_click), 0)::float8 AS reciprocal_rank,
       (SELECT jsonb_object_agg(l.latency_bucket, l.n) FROM latency l
        WHERE l.hour = t.hour AND l.version_id IS NOT DISTINCT FROM t.version_id) AS latency,
       (SELECT jsonb_object_agg(r.rank, r.n) FROM ranks r
        WHERE r.hour = t.hour AND r.version_id IS NOT DISTINCT FROM t.version_id) AS ranks
FROM per_request t
GROUP BY t.hour, t.version_id
"""

# retriever: /recommend answers, by the retriever that answered; reranker: answers a cross-encoder
# reordered, by that reranker (in /recommend with rerank, or /rerank itself)
ROLES = {
    "retriever": ("i.model_version_id", "AND i.endpoint = 'recommend'"),
    "reranker": (
        "CASE WHEN i.endpoint = 'rerank' THEN i.model_version_id ELSE i.reranker_version_id END",
        "AND (i.endpoint = 'rerank' OR i.reranker_version_id IS NOT NULL)",
    ),
}


@dataclass
class Hourly:
    """One model version's sums over one hour (or, added up, over a bucket of hours)."""

    hour: dt.datetime
    version_id: uuid.UUID | None
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    zero_click: int = 0
    reciprocal_rank: float = 0.0
    clicks_by_rank: np.ndarray = field(default_factory=lambda: np.zeros(MAX_RANK, np.int64))
    latency_histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_SIZE, np.int64))

    def add(self, other: Hourly) -> None:
        for name in ("requests", "impressions", "clicks", "carts", "purchases", "zero_click"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reciprocal_rank += other.reciprocal_rank
        self.clicks_by_rank = self.clicks_by_rank + other.clicks_by_rank
        self.latency_histogram = self.latency_histogram + other.latency_histogram

    def latency_percentile(self, p: float) -> float:
        """The p-quantile of the latencies counted, interpolated within its bucket (in log space): within
        one bucket's width (9%) of the exact value."""
        counts = self.latency_histogram
        total = int(counts.sum())
        if total == 0:
            return 0.0
        target = p * total
        cumulative = np.cumsum(counts)
        bucket = int(np.searchsorted(cumulative, max(target, 1e-12)))
        if bucket == 0:
            return LATENCY_LOW_MS
        if bucket > LATENCY_BUCKETS:
            return LATENCY_HIGH_MS
        before = cumulative[bucket - 1]
        fraction = (target - before) / max(counts[bucket], 1)
        step = math.log(LATENCY_HIGH_MS / LATENCY_LOW_MS) / LATENCY_BUCKETS
        return LATENCY_LOW_MS * math.exp(step * (bucket - 1 + min(max(fraction, 0.0), 1.0)))


def _dense(mapping: dict[str, int] | None, size: int, offset: int) -> np.ndarray:
    out = np.zeros(size, np.int64)
    for key, value in (mapping or {}).items():
        index = int(key) - offset
        if 0 <= index < size:
            out[index] += int(value)
    return out


async def hourly(
    session: AsyncSession, project_id: uuid.UUID, role: str, start: dt.datetime, end: dt.datetime
) -> list[Hourly]:
    """The sums per hour and version of what was served in [start, end), from the raw tables."""
    version_expr, where = ROLES[role]
    params = {"project_id": project_id, "start": start, "end": end, "low": LATENCY_LOW_MS,
              "high": LATENCY_HIGH_MS, "buckets": LATENCY_BUCKETS, "max_rank": MAX_RANK}  # fmt: skip
    rows = await session.execute(text(_HOURLY.format(version=version_expr, where=where)), params)
    return [
        Hourly(
            hour=row.hour,
            version_id=row.version_id,
            requests=int(row.requests),
            impressions=int(row.impressions or 0),
            clicks=int(row.clicks),
            carts=int(row.carts),
            purchases=int(row.purchases),
            zero_click=int(row.zero_click),
            reciprocal_rank=float(row.reciprocal_rank),
            clicks_by_rank=_dense(row.ranks, MAX_RANK, 1),
            latency_histogram=_dense(row.latency, HISTOGRAM_SIZE, 0),
        )
        for row in rows
    ]


async def rolled_up(
    session: AsyncSession, project_id: uuid.UUID, role: str, start: dt.datetime, end: dt.datetime
) -> list[Hourly]:
    """The stored sums of the hours in [start, end)."""
    rows = await session.execute(
        select(OnlineRollup).where(
            OnlineRollup.project_id == project_id,
            OnlineRollup.role == role,
            OnlineRollup.hour >= start,
            OnlineRollup.hour < end,
        )
    )
    return [
        Hourly(
            hour=r.hour,
            version_id=r.model_version_id,
            requests=r.requests,
            impressions=r.impressions,
            clicks=r.clicks,
            carts=r.carts,
            purchases=r.purchases,
            zero_click=r.zero_click,
            reciprocal_rank=r.reciprocal_rank,
            clicks_by_rank=np.asarray(r.clicks_by_rank, np.int64),
            latency_histogram=np.asarray(r.latency_histogram, np.int64),
        )
        for r in rows.scalars()
    ]


async def hours_done(
    session: AsyncSession, project_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> set[dt.datetime]:
    found = await session.execute(
        select(OnlineRollupHour.hour).where(
            OnlineRollupHour.project_id == project_id,
            OnlineRollupHour.hour >= start,
            OnlineRollupHour.hour < end,
        )
    )
    return set(found.scalars())


async def roll_up(session: AsyncSession, project_id: uuid.UUID, start: dt.datetime, end: dt.datetime) -> int:
    """(Re)write the rollups of the whole hours in [start, end) from the raw tables, every role; the
    rows written. One writer per project at a time (a transaction lock): a query filling hours in and the
    periodic pass never interleave."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"online_rollups:{project_id}"},
    )
    await session.execute(
        delete(OnlineRollup).where(
            OnlineRollup.project_id == project_id, OnlineRollup.hour >= start, OnlineRollup.hour < end
        )
    )
    values: list[dict[str, Any]] = []
    for role in ROLES:
        for row in await hourly(session, project_id, role, start, end):
            values.append(
                {
                    "project_id": project_id, "role": role, "hour": row.hour,
                    "model_version_id": row.version_id, "requests": row.requests,
                    "impressions": row.impressions, "clicks": row.clicks, "carts": row.carts,
                    "purchases": row.purchases, "zero_click": row.zero_click,
                    "reciprocal_rank": row.reciprocal_rank, "clicks_by_rank": row.clicks_by_rank.tolist(),
                    "latency_histogram": row.latency_histogram.tolist(),
                }
            )  # fmt: skip
    for chunk in range(0, len(values), 1000):
        await session.execute(pg_insert(OnlineRollup).values(values[chunk : chunk + 1000]))
    hours = []
    hour = start
    while hour < end:
        hours.append({"project_id": project_id, "hour": hour})
        hour += dt.timedelta(hours=1)
    for chunk in range(0, len(hours), 1000):
        statement = pg_insert(OnlineRollupHour).values(hours[chunk : chunk + 1000])
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[OnlineRollupHour.project_id, OnlineRollupHour.hour],
                set_={"computed_at": statement.excluded.computed_at},
            )
        )
    return len(values)
