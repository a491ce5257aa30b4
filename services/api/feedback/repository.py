"""Online metrics in one SQL statement over the impressions and the events tied to them by request id.

Each impression row is one answered request; an event counts for it when it carries the request's id
(any number of identical events count once: one click per product and request, and so on)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# {version}: the model version the rows are grouped by; {where}: the role's (and version's) filter
_QUERY = """
WITH imp AS (
    SELECT i.request_id, {version} AS version_id, i.product_ids, i.latency_ms,
           date_trunc(:bucket, i.served_at, 'UTC') AS bucket, i.id
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
    SELECT imp.id, imp.bucket, imp.version_id, imp.latency_ms, cardinality(imp.product_ids) AS shown,
           count(*) FILTER (WHERE ev.event_type = 'click') AS clicks,
           count(*) FILTER (
               WHERE ev.event_type = 'click' AND array_position(imp.product_ids, ev.product_id) <= :k
           ) AS clicks_at_k,
           count(*) FILTER (WHERE ev.event_type = 'cart') AS carts,
           count(*) FILTER (WHERE ev.event_type = 'purchase') AS purchases,
           min(array_position(imp.product_ids, ev.product_id)) FILTER (WHERE ev.event_type = 'click')
               AS best_click
    FROM imp LEFT JOIN ev ON ev.request_id = imp.request_id
    GROUP BY imp.id, imp.bucket, imp.version_id, imp.latency_ms, imp.product_ids
)
SELECT bucket, version_id,
       count(*) AS requests,
       sum(shown) AS impressions,
       sum(clicks) AS clicks,
       sum(clicks_at_k)::float8 / count(*) AS ctr_at_k,
       sum(carts)::float8 / count(*) AS cart_rate,
       sum(purchases)::float8 / count(*) AS purchase_rate,
       avg(CASE WHEN best_click IS NULL THEN 0.0 ELSE 1.0 / best_click END)::float8 AS mrr,
       avg(CASE WHEN clicks = 0 THEN 1.0 ELSE 0.0 END)::float8 AS zero_click_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS latency_p99_ms
FROM per_request
GROUP BY bucket, version_id
ORDER BY bucket, version_id
"""

# retriever: /recommend answers, by the retriever that answered; reranker: answers a cross-encoder
# reordered, by that reranker (in /recommend with rerank, or /rerank itself)
_ROLES = {
    "retriever": ("i.model_version_id", "AND i.endpoint = 'recommend'"),
    "reranker": (
        "CASE WHEN i.endpoint = 'rerank' THEN i.model_version_id ELSE i.reranker_version_id END",
        "AND (i.endpoint = 'rerank' OR i.reranker_version_id IS NOT NULL)",
    ),
}


async def online_metrics(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    role: str,
    start: dt.datetime,
    end: dt.datetime,
    bucket: str,
    k: int,
    version: uuid.UUID | None,
) -> list[dict[str, Any]]:
    version_expr, where = _ROLES[role]
    params: dict[str, Any] = {"project_id": project_id, "start": start, "end": end, "bucket": bucket, "k": k}
    if version is not None:
        where += f" AND {version_expr} = :version"
        params["version"] = version
    rows = await session.execute(text(_QUERY.format(version=version_expr, where=where)), params)
    return [dict(row._mapping) for row in rows]
