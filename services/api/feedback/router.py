from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from services.api.context import ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.feedback import service
from services.api.feedback.schemas import Bucket, FeedbackJobCreate, OnlineMetrics, OnlineRole
from services.api.training.router import IdempotencyKey
from services.api.training.schemas import JobRead

router = APIRouter(tags=["feedback"])


@router.get("/projects/{project_id}/online-metrics", response_model=OnlineMetrics, responses=ERRORS)
async def online_metrics(
    ctx: ProjectDep,
    session: SessionDep,
    resources: ResourcesDep,
    start: Annotated[
        dt.datetime | None, Query(alias="from", description="Inclusive; default: 7 days before `to`.")
    ] = None,
    end: Annotated[dt.datetime | None, Query(alias="to", description="Exclusive; default: now.")] = None,
    version: Annotated[uuid.UUID | None, Query(description="Only this model version.")] = None,
    role: Annotated[
        OnlineRole,
        Query(description="retriever: /recommend answers; reranker: the answers a cross-encoder reordered."),
    ] = OnlineRole.retriever,
    bucket: Bucket = Bucket.day,
    k: Annotated[int, Query(ge=1, le=100, description="The cut-off of CTR@k.")] = 10,
) -> OnlineMetrics:
    """How each model version does with shoppers, per hour or day, from what inference served
    (impressions) and the clicks, carts and purchases sent to /events with the same request id:
    requests, products shown, CTR@k, cart and purchase rates per request, the mean reciprocal rank of
    the best-placed click, the zero-click rate and the service's latency (p50, p99)."""
    return await service.online_metrics(
        session, ctx, resources.settings, role=role, start=start, end=end, bucket=bucket, k=k, version=version
    )


@router.post(
    "/projects/{project_id}/feedback-jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={**ERRORS, 409: {"description": "Over the compute budget, project not running, or key reused"}},
)
async def submit_feedback_job(
    data: FeedbackJobCreate,
    ctx: ProjectDep,
    session: SessionDep,
    resources: ResourcesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a feedback job: the impressions served in [from, to) and the clicks, carts and purchases
    sent for them become a new version of the relevance dataset `name`, graded by a position-based click
    model (carts and purchases weigh more; pairs shown fewer than `min_impressions` times are left out),
    and of `name`-sequences (each shopper's carts and purchases in order). Follow it like any job
    (GET /training-jobs/{id}); its result names the versions written and their stats."""
    submitted = await service.submit_feedback_job(session, resources, ctx, data, idempotency_key)
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.job
