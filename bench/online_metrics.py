"""How fast `GET /projects/{id}/online-metrics` answers over a week of a million impressions.

    python bench/online_metrics.py --impressions 1000000 [--database-url postgresql://postgres@127.0.0.1/postgres]

Makes a scratch database next to the one named (dropped at the end), migrates it, and fills it in SQL:
one project, two retriever versions (a 10% canary), ``--impressions`` impressions of 10 products spread
over seven days, and clicks, carts and purchases on about 6% of the products shown, tied to their
requests. Then rolls the week up into hourly rows (what the api's queries and its periodic pass do once
per closed hour) and times it, and times the endpoint's answer (services.api.feedback.service) for the
week, by day and by hour, ``--runs`` times each: the median and the slowest."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import time
import uuid
from types import SimpleNamespace

import asyncpg
from scratch import scratch_database  # bench/scratch.py, beside this script

from services.api.feedback import repository, service
from services.api.feedback.schemas import Bucket, OnlineRole
from shared.config import Settings
from shared.db import create_engine, create_sessionmaker

FILL = """
WITH p AS (
    INSERT INTO users (name, email) VALUES ('bench', 'bench@recforge.local') RETURNING id
), project AS (
    INSERT INTO projects (slug, name, owner_id) SELECT 'bench', 'bench', id FROM p RETURNING id
)
SELECT id FROM project
"""


async def fill(dsn: str, impressions: int, start: dt.datetime) -> tuple[uuid.UUID, list[uuid.UUID]]:
    connection = await asyncpg.connect(dsn)
    try:
        project_id = await connection.fetchval(FILL)
        versions = [uuid.uuid4(), uuid.uuid4()]
        for number, version in enumerate(versions, start=1):
            await connection.execute(
                "INSERT INTO model_versions (id, project_id, version, task_type, base_model) "
                "VALUES ($1, $2, $3, 'bi_encoder', 'bench')",
                version,
                project_id,
                number,
            )
        await connection.execute(
            """
            INSERT INTO impressions (project_id, request_id, endpoint, model_version_id, arm, query,
                                     product_ids, latency_ms, served_at)
            SELECT $1, 'r' || n, 'recommend',
                   CASE WHEN n % 10 = 0 THEN $3::uuid ELSE $2::uuid END,
                   CASE WHEN n % 10 = 0 THEN 'canary' ELSE 'primary' END,
                   'query ' || (n % 5000),
                   ARRAY(SELECT 'p' || ((n * 7 + k * 13) % 20000) FROM generate_series(0, 9) AS k),
                   5 + (n % 97) / 4.0,
                   $4::timestamptz + (n::float8 / $5) * interval '7 days'
            FROM generate_series(1, $5) AS n
            """,
            project_id,
            versions[0],
            versions[1],
            start,
            impressions,
        )
        # a click on about 6% of the products shown (more near the top), a cart on a third of those,
        # a purchase on half of the carts
        await connection.execute(
            """
            INSERT INTO events (project_id, request_id, event_type, product_id, position)
            SELECT i.project_id, i.request_id, kind, i.product_ids[k + 1], k
            FROM impressions i
            CROSS JOIN generate_series(0, 9) AS k
            CROSS JOIN LATERAL (
                SELECT 'click' AS kind WHERE abs(hashtext(i.request_id || ':' || k)) % 1000 < 150 / (k + 1)
                UNION ALL
                SELECT 'cart' WHERE abs(hashtext(i.request_id || ':' || k)) % 1000 < 50 / (k + 1)
                UNION ALL
                SELECT 'purchase' WHERE abs(hashtext(i.request_id || ':' || k)) % 1000 < 25 / (k + 1)
            ) AS chosen
            """
        )
        await connection.execute("ANALYZE impressions; ANALYZE events")
        return project_id, versions
    finally:
        await connection.close()


async def run(args: argparse.Namespace) -> None:
    async with scratch_database(args.database_url, keep=args.keep) as scratch:
        start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
        began = time.perf_counter()
        project_id, _ = await fill(scratch.set(drivername="postgresql").render_as_string(hide_password=False),
                                   args.impressions, start)  # fmt: skip
        print(f"filled {args.impressions:,} impressions in {time.perf_counter() - began:.0f} s")
        settings = Settings(database_url=scratch.render_as_string(hide_password=False))
        engine = create_engine(settings, pool_size=1)
        sessionmaker = create_sessionmaker(engine)
        ctx = SimpleNamespace(project=SimpleNamespace(id=project_id))
        end = start + dt.timedelta(days=7)
        try:
            async with sessionmaker() as session:
                began = time.perf_counter()
                written = await repository.roll_up(session, project_id, start, end)
                await session.commit()
                print(f"rolled up 168 hours into {written:,} rows in {time.perf_counter() - began:.1f} s")
            for bucket in (Bucket.day, Bucket.hour):
                times = []
                for _ in range(args.runs):
                    async with sessionmaker() as session:
                        began = time.perf_counter()
                        answer = await service.online_metrics(
                            session, ctx, settings, role=OnlineRole.retriever, start=start, end=end,
                            bucket=bucket, k=10, version=None,
                        )  # fmt: skip
                        times.append(time.perf_counter() - began)
                rows = answer.rows
                requests = sum(r.requests for r in rows)
                print(
                    f"bucket={bucket.value}: {len(rows)} rows over {requests:,} requests; "
                    f"median {statistics.median(times):.3f} s, slowest {max(times):.3f} s ({args.runs} runs)"
                )
        finally:
            await engine.dispose()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database (to explain queries).")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
