"""The api's periodic rollup pass: every ``online_rollup_every_s`` it rewrites the hourly rollups of the
last ``online_rollup_settle_s`` (up to the hours still answered live), so clicks, carts and purchases
that arrive after their hour closed are counted. One api replica runs a pass at a time (a Redis lock);
a pass that fails waits for the next turn: queries roll up what they miss themselves."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.deps import ApiResources
from services.api.feedback import repository
from shared.config import Settings
from shared.db import unit_of_work

log = logging.getLogger("recforge.feedback")

LOCK = "recforge:online-rollups"


def _hour(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


async def roll_up_recent(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], now: dt.datetime | None = None
) -> int:
    """One pass over every project that served something in the settle window; the rows written."""
    now = now or dt.datetime.now(dt.UTC)
    since = _hour(now - dt.timedelta(seconds=settings.online_rollup_settle_s))
    until = _hour(now - dt.timedelta(seconds=settings.online_rollup_delay_s))
    if since >= until:
        return 0
    async with sessionmaker() as session:
        projects = (
            (
                await session.execute(
                    text(
                        "SELECT p.id FROM projects p WHERE EXISTS (SELECT 1 FROM impressions i"
                        " WHERE i.project_id = p.id AND i.served_at >= :since AND i.served_at < :until)"
                    ),
                    {"since": since, "until": until},
                )
            )
            .scalars()
            .all()
        )
    written = 0
    for project_id in projects:
        async with unit_of_work(sessionmaker) as session:
            written += await repository.roll_up(session, project_id, since, until)
    return written


async def rollup_loop(resources: ApiResources) -> None:
    every = resources.settings.online_rollup_every_s
    while True:
        try:
            if await resources.redis.set(LOCK, "1", nx=True, px=int(every * 1000)):
                started = time.perf_counter()
                written = await roll_up_recent(resources.settings, resources.sessionmaker)
                log.info(
                    "online metrics rolled up",
                    extra={"rows": written, "seconds": round(time.perf_counter() - started, 3)},
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("the online-metrics rollup pass failed; the next one tries again", exc_info=True)
        await asyncio.sleep(every)
