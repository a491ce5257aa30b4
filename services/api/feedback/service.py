"""Online metrics: how each deployed version does with shoppers, per hour or day."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import ProjectContext
from services.api.feedback import repository
from services.api.feedback.schemas import Bucket, OnlineMetrics, OnlineRole, VersionMetrics
from shared.errors import ValidationFailed

DEFAULT_WINDOW = dt.timedelta(days=7)
MAX_WINDOW = {Bucket.hour: dt.timedelta(days=31), Bucket.day: dt.timedelta(days=366)}


def _window(
    start: dt.datetime | None, end: dt.datetime | None, bucket: Bucket
) -> tuple[dt.datetime, dt.datetime]:
    end = end or dt.datetime.now(dt.UTC)
    start = start or end - DEFAULT_WINDOW
    if start >= end:
        raise ValidationFailed(
            "from must be before to", detail=[{"loc": ["query", "from"], "msg": "not before to"}]
        )
    if end - start > MAX_WINDOW[bucket]:
        most = MAX_WINDOW[bucket].days
        raise ValidationFailed(
            f"a window of {bucket.value}s spans at most {most} days: narrow from/to, or use bucket=day",
            detail=[{"loc": ["query", "from"], "msg": f"more than {most} days before to"}],
        )
    return start, end


async def online_metrics(
    session: AsyncSession,
    ctx: ProjectContext,
    *,
    role: OnlineRole,
    start: dt.datetime | None,
    end: dt.datetime | None,
    bucket: Bucket,
    k: int,
    version: uuid.UUID | None,
) -> OnlineMetrics:
    start, end = _window(start, end, bucket)
    rows = await repository.online_metrics(
        session,
        ctx.project.id,
        role=role.value,
        start=start,
        end=end,
        bucket=bucket.value,
        k=k,
        version=version,
    )
    return OnlineMetrics(
        project_id=ctx.project.id,
        role=role,
        bucket=bucket,
        k=k,
        from_=start,
        to=end,
        rows=[VersionMetrics(model_version_id=row.pop("version_id"), **row) for row in rows],
    )
