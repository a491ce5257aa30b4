from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from services.api.context import CurrentPerson, ProjectDep
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS
from services.api.labeling import service
from services.api.labeling.schemas import LabelCreate, LabelRead, NextItem, QueueClose, QueueCreate, QueueRead
from services.api.pagination import CursorQuery, LimitQuery, Page

router = APIRouter(tags=["labelling"])


@router.post(
    "/projects/{project_id}/labeling-queues",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=QueueRead,
    responses={**ERRORS, 409: {"description": "No catalog, over the compute budget, or project not running"}},
)
async def create_queue(
    data: QueueCreate, ctx: ProjectDep, session: SessionDep, resources: ResourcesDep
) -> QueueRead:
    """Build a queue of (query, product) pairs for people to judge: a selection job (follow it at
    GET /training-jobs/{selection_job_id}) finds each pool query's candidates in the catalog, scores them
    with the rankers there are (BM25, the retriever, the reranker and, for searches, the click model),
    and picks `budget` pairs by `strategy`, spread across queries. The queue opens when the job is done,
    its pairs shared among `labellers` (`labels_per_item` each)."""
    return await service.create(session, resources, ctx, data)


@router.get("/projects/{project_id}/labeling-queues", response_model=Page[QueueRead], responses=ERRORS)
async def list_queues(
    ctx: ProjectDep, session: SessionDep, cursor: CursorQuery = None, limit: LimitQuery = 50
) -> Page[QueueRead]:
    """The project's labelling queues, newest first."""
    return await service.list_queues(session, ctx, cursor=cursor, limit=limit)


@router.get("/labeling-queues/{queue_id}", response_model=QueueRead, responses=ERRORS)
async def get_queue(queue_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> QueueRead:
    """A queue with its progress per labeller and, with two or more labels per pair, their agreement."""
    _, queue = await service.load(session, principal, queue_id)
    return await service.read(session, queue)


@router.get("/labeling-queues/{queue_id}/next", response_model=NextItem, responses=ERRORS)
async def next_item(queue_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> NextItem:
    """Your next pair to judge (null when you have none left), and how far you are."""
    ctx, queue = await service.load(session, principal, queue_id)
    return await service.next_item(session, ctx, queue)


@router.post("/labeling-queues/{queue_id}/items/{item_id}/label", response_model=LabelRead, responses=ERRORS)
async def label_item(
    queue_id: uuid.UUID, item_id: uuid.UUID, data: LabelCreate, session: SessionDep, principal: CurrentPerson
) -> LabelRead:
    """Grade a pair assigned to you on the queue's scale (`grade`), or skip it with a reason; a second
    answer replaces the first while the queue is open."""
    ctx, queue = await service.load(session, principal, queue_id)
    return await service.label(session, ctx, queue, item_id, data)


@router.post("/labeling-queues/{queue_id}/close", response_model=QueueRead, responses=ERRORS)
async def close_queue(
    queue_id: uuid.UUID,
    data: QueueClose,
    session: SessionDep,
    resources: ResourcesDep,
    principal: CurrentPerson,
) -> QueueRead:
    """Write the labels as a new version of the queue's relevance dataset (each pair's grade the mean of
    its labels; merged with a base version when one is named, the labels winning a tie) and close the
    queue. The version's lineage names the queue, its strategy and labellers; its stats, the agreement."""
    ctx, queue = await service.load(session, principal, queue_id, for_update=True)
    return await service.close(session, resources, ctx, queue, data)
