"""Labelling queues: pairs chosen by a selection job (the trainer runs it), judged by the queue's
labellers, closed into a version of a relevance dataset."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import defaultdict
from functools import partial
from typing import Any

import anyio
import pyarrow as pa
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import Principal, ProjectContext, load_entity
from services.api.datasets import repository as datasets_repository
from services.api.deployments import repository as deployments_repository
from services.api.deps import ApiResources
from services.api.labeling import repository
from services.api.labeling.schemas import (
    ItemToLabel,
    LabelCreate,
    LabellerProgress,
    LabelRead,
    NextItem,
    QueueClose,
    QueueCreate,
    QueueProgress,
    QueueRead,
)
from services.api.pagination import Page, decode_time_cursor, time_cursor
from services.api.projects.permissions import Action
from services.api.training import repository as training_repository
from services.api.training import service as training
from shared.datasets import splits, stats, storage
from shared.datasets.catalog import latest_catalog_version
from shared.datasets.pipeline import rows_hash, with_split
from shared.datasets.schema import SPLIT_GROUP
from shared.db import on_rollback
from shared.errors import Conflict, Forbidden, ValidationFailed
from shared.labeling import LabelingOptions, agreement, final_grades, labels_table, merge_labels
from shared.models import DatasetVersion, LabelingQueue, TrainingJob
from shared.models.enums import (
    AssignmentStatus,
    DatasetKind,
    DeploymentRole,
    JobStatus,
    JobType,
    LabelingPool,
    LabelingStatus,
    LabelingStrategy,
    ModelTaskType,
    ProjectRole,
)
from shared.storage import ObjectStore, object_store

log = logging.getLogger("recforge.api.labeling")

DEFAULT_WINDOW = dt.timedelta(days=7)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", detail=[{"loc": ["body", field], "msg": message}])


async def _relevance_version(
    session: AsyncSession, ctx: ProjectContext, version_id: uuid.UUID, field: str
) -> DatasetVersion:
    found = await training_repository.dataset_version_in_project(session, version_id, ctx.project.id)
    if found is None:
        raise _invalid(field, "no such dataset version in this project")
    if found[1].kind != DatasetKind.relevance.value:
        raise _invalid(field, f"a labelling queue works with relevance judgments, not {found[1].kind}")
    return found[0]


async def _model(
    session: AsyncSession,
    ctx: ProjectContext,
    given: uuid.UUID | None,
    role: DeploymentRole,
    task: ModelTaskType,
    field: str,
) -> uuid.UUID | None:
    """The version named, else the one deployed in the role (None when there is none)."""
    if given is None:
        deployed = await deployments_repository.active_deployment(session, ctx.project.id, role)
        return deployed.model_version_id if deployed is not None else None
    version = await training_repository.model_version_in_project(session, given, ctx.project.id)
    if version is None:
        raise _invalid(field, "no such model version in this project")
    if version.task_type != task.value:
        raise _invalid(field, f"a {role.value} is a {task.value} version, not a {version.task_type}")
    if "model" not in (version.artifacts or {}):
        raise _invalid(field, "that model version has no ONNX graph")
    return version.id


async def _labellers(session: AsyncSession, ctx: ProjectContext, data: QueueCreate) -> list[uuid.UUID]:
    labellers = list(dict.fromkeys(data.labellers or [ctx.principal.user_id]))
    roles = await repository.member_roles(session, ctx.project.id, labellers)
    for user in labellers:
        role = roles.get(user)
        if role is None:
            raise _invalid("labellers", f"{user} is not a member of this project: add them first")
        if role == ProjectRole.viewer.value:
            raise _invalid("labellers", f"{user} is a viewer: viewers read, they do not label")
    if data.labels_per_item > len(labellers):
        raise _invalid(
            "labels_per_item",
            f"{data.labels_per_item} labels per pair need as many labellers or more ({len(labellers)} named)",
        )
    return labellers


async def create(
    session: AsyncSession, resources: ApiResources, ctx: ProjectContext, data: QueueCreate
) -> QueueRead:
    """Check the request, write the queue and its selection job, and enqueue the job after the commit."""
    ctx.require(Action.write_datasets)
    ctx.require(Action.run_jobs)
    training.ensure_running(ctx)
    labellers = await _labellers(session, ctx, data)
    if await latest_catalog_version(session, ctx.project.id) is None:
        raise Conflict("the project has no catalog to find candidates in: import one first")
    judged: list[uuid.UUID] = []
    pool_version = None
    start = end = None
    if data.pool == LabelingPool.dataset:
        if data.dataset_version_id is None:
            raise _invalid("dataset_version_id", "a dataset pool names its relevance dataset version")
        pool_version = await _relevance_version(session, ctx, data.dataset_version_id, "dataset_version_id")
        judged.append(pool_version.id)
    else:
        if data.dataset_version_id is not None:
            raise _invalid("dataset_version_id", "an impressions pool reads searches, not a dataset version")
        end = data.to or dt.datetime.now(dt.UTC)
        start = data.from_ or end - DEFAULT_WINDOW
    if data.base_dataset_version_id is not None:
        base = await _relevance_version(session, ctx, data.base_dataset_version_id, "base_dataset_version_id")
        judged.append(base.id)
    retriever = await _model(
        session, ctx, data.retriever_version_id, DeploymentRole.retriever, ModelTaskType.bi_encoder,
        "retriever_version_id",
    )  # fmt: skip
    reranker = await _model(
        session, ctx, data.reranker_version_id, DeploymentRole.reranker, ModelTaskType.cross_encoder,
        "reranker_version_id",
    )  # fmt: skip
    if data.strategy == LabelingStrategy.uncertainty and reranker is None:
        raise _invalid(
            "strategy",
            "uncertainty sampling scores pairs with a cross-encoder and none is deployed: promote one as "
            "the reranker, name reranker_version_id, or use committee or random",
        )
    queue = LabelingQueue(
        project_id=ctx.project.id,
        name=data.name,
        status=LabelingStatus.building.value,
        strategy=data.strategy.value,
        pool=data.pool.value,
        budget=data.budget,
        labels_per_item=data.labels_per_item,
        assignment=data.assignment.value,
        labellers=labellers,
        min_grade=data.min_grade,
        max_grade=data.max_grade,
        dataset_name=data.dataset_name,
        pool_dataset_version_id=pool_version.id if pool_version else None,
        created_by=ctx.principal.user_id,
    )
    session.add(queue)
    await session.flush()
    options = LabelingOptions(
        queue_id=queue.id,
        strategy=data.strategy.value,
        budget=data.budget,
        pool=data.pool.value,
        split=data.split,
        start=start,
        end=end,
        max_queries=data.max_queries,
        candidates_per_query=data.candidates_per_query,
        k=data.k,
        per_query=data.per_query,
        seed=data.seed,
        retriever_version_id=retriever,
        reranker_version_id=reranker,
        judged_version_ids=tuple(judged),
    )
    queue.options = {
        **options.model_dump(mode="json", exclude={"queue_id"}),
        "base_dataset_version_id": str(data.base_dataset_version_id)
        if data.base_dataset_version_id
        else None,
    }
    job = TrainingJob(
        project_id=ctx.project.id,
        job_type=JobType.labeling.value,
        dataset_version_id=pool_version.id if pool_version else None,
        hyperparameters=options.model_dump(mode="json"),
        status=JobStatus.queued.value,
        priority=data.priority,
        device="cpu",
        compute_limit_hours=data.compute_limit_hours,
        created_by=ctx.principal.user_id,
    )

    def no_replay(first: TrainingJob) -> training.Submitted:  # jobs without an Idempotency-Key never clash
        raise Conflict("a selection job of this queue exists already", detail={"job_id": str(first.id)})

    submitted = await training.insert_job(session, resources, ctx, job, "cpu", no_replay)
    queue.selection_job_id = submitted.job.id
    await audit_change(
        session, ctx, "labeling_queue.create", "labeling_queue", queue.id, None,
        {"name": queue.name, "strategy": queue.strategy, "budget": queue.budget, "labellers": len(labellers)},
    )  # fmt: skip
    await session.flush()
    log.info("labelling queue created", extra={"queue_id": str(queue.id), "job_id": str(submitted.job.id)})
    return await read(session, queue)


async def _status(session: AsyncSession, queue: LabelingQueue) -> tuple[LabelingStatus, str | None]:
    """A queue still building whose selection job ended without opening it has failed (the job says why)."""
    if queue.status != LabelingStatus.building.value:
        return LabelingStatus(queue.status), queue.error
    state = await repository.job_state(session, queue.selection_job_id)
    if state is None:
        return LabelingStatus.failed, "its selection job is gone"
    status, error = state
    if status in (JobStatus.failed.value, JobStatus.cancelled.value):
        return LabelingStatus.failed, error or f"its selection job was {status}"
    return LabelingStatus.building, None


async def _progress(session: AsyncSession, queue: LabelingQueue) -> QueueProgress:
    by_user = await repository.counts(session, queue.id)
    names = await repository.names(session, list(by_user))
    people = [
        LabellerProgress(
            user_id=user,
            name=names.get(user),
            assigned=c.assigned,
            labelled=c.labelled,
            skipped=c.skipped,
            pending=c.pending,
        )
        for user, c in sorted(by_user.items(), key=lambda item: str(item[0]))
    ]
    return QueueProgress(
        items=await repository.item_count(session, queue.id),
        labels_needed=sum(p.assigned for p in people),
        labelled=sum(p.labelled for p in people),
        skipped=sum(p.skipped for p in people),
        pending=sum(p.pending for p in people),
        by_labeller=people,
    )


def _by_item(answers: list[repository.Answer]) -> dict[uuid.UUID, dict[uuid.UUID, int]]:
    graded: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
    for answer in answers:
        if answer.status == AssignmentStatus.labelled.value and answer.grade is not None:
            graded[answer.item_id][answer.user_id] = answer.grade
    return graded


async def read(session: AsyncSession, queue: LabelingQueue, *, detail: bool = True) -> QueueRead:
    out = QueueRead.model_validate(queue)
    out.status, out.error = await _status(session, queue)
    if detail:
        out.progress = await _progress(session, queue)
        if queue.status == LabelingStatus.closed.value and "agreement" in queue.report:
            out.agreement = queue.report["agreement"]
        elif queue.labels_per_item > 1:
            answers = await repository.answers(session, queue.id)
            out.agreement = await anyio.to_thread.run_sync(
                agreement, _by_item(answers), queue.min_grade, queue.max_grade
            )
    return out


async def load(
    session: AsyncSession, principal: Principal, queue_id: uuid.UUID, *, for_update: bool = False
) -> tuple[ProjectContext, LabelingQueue]:
    """The queue and its project context; a queue of a project the caller cannot see is a 404."""
    return await load_entity(
        session, principal, LabelingQueue, queue_id, "labelling queue", for_update=for_update
    )


async def list_queues(
    session: AsyncSession, ctx: ProjectContext, *, cursor: str | None, limit: int
) -> Page[QueueRead]:
    rows = await repository.list_queues(
        session, ctx.project.id, after=decode_time_cursor(cursor), limit=limit
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [await read(session, queue, detail=False) for queue in rows]
    next_cursor = time_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(items=items, next_cursor=next_cursor)


def _labeller(ctx: ProjectContext, queue: LabelingQueue) -> uuid.UUID:
    user = ctx.principal.user_id
    if user not in queue.labellers or ctx.role is None:
        raise Forbidden("you are not a labeller of this queue: its creator names the labellers")
    return user


async def next_item(session: AsyncSession, ctx: ProjectContext, queue: LabelingQueue) -> NextItem:
    user = _labeller(ctx, queue)
    status, _ = await _status(session, queue)
    mine = (await repository.counts(session, queue.id, user)).get(user, repository.Counts())
    found = (
        await repository.next_assignment(session, queue.id, user) if status == LabelingStatus.open else None
    )
    item = None
    if found is not None:
        _, row = found
        item = ItemToLabel(
            id=row.id, position=row.position, query=row.query, product_id=row.product_id,
            product_text=row.product_text,
        )  # fmt: skip
    return NextItem(
        queue_id=queue.id,
        status=status,
        grades=list(range(queue.min_grade, queue.max_grade + 1)),
        item=item,
        done=mine.done,
        assigned=mine.assigned,
    )


async def label(
    session: AsyncSession, ctx: ProjectContext, queue: LabelingQueue, item_id: uuid.UUID, data: LabelCreate
) -> LabelRead:
    user = _labeller(ctx, queue)
    if queue.status != LabelingStatus.open.value:
        raise Conflict(f"the queue is {(await _status(session, queue))[0].value}: it takes no labels")
    if data.grade is not None and not queue.min_grade <= data.grade <= queue.max_grade:
        raise _invalid("grade", f"grades of this queue go from {queue.min_grade} to {queue.max_grade}")
    mine = await repository.assignment(session, queue.id, item_id, user)
    if mine is None:
        if not await repository.item_in_queue(session, queue.id, item_id):
            raise ValidationFailed(
                "no such pair in this queue",
                detail=[{"loc": ["path", "item_id"], "msg": "not in this queue"}],
            )
        raise Forbidden("this pair is assigned to other labellers")
    if data.skip:
        mine.status, mine.grade, mine.skip_reason = AssignmentStatus.skipped.value, None, data.reason
    else:
        mine.status, mine.grade, mine.skip_reason = AssignmentStatus.labelled.value, data.grade, None
    mine.answered_at = dt.datetime.now(dt.UTC)
    await session.flush()
    counts = (await repository.counts(session, queue.id, user)).get(user, repository.Counts())
    return LabelRead(
        item_id=item_id, status=AssignmentStatus(mine.status), grade=mine.grade, skip_reason=mine.skip_reason,
        answered_at=mine.answered_at, done=counts.done, assigned=counts.assigned,
    )  # fmt: skip


def _rows(
    store: ObjectStore, answers: list[repository.Answer], base_tables: dict[str, Any] | None, data: QueueClose
) -> tuple[pa.Table, dict[str, int]]:
    """The version's rows: each graded pair's mean label, beside the base's judgments; split by query."""
    labels: dict[uuid.UUID, list[int]] = defaultdict(list)
    pair: dict[uuid.UUID, tuple[str, str]] = {}
    for answer in answers:
        pair[answer.item_id] = (answer.query, answer.product_id)
        if answer.status == AssignmentStatus.labelled.value and answer.grade is not None:
            labels[answer.item_id].append(answer.grade)
    grades = final_grades(labels)
    table = labels_table({pair[item]: grade for item, grade in grades.items()})
    sources = {"labels": table.num_rows, "base": 0}
    if base_tables is not None:
        table, sources = merge_labels(table, storage.read_table(store, base_tables, "relevance"))
    spec = splits.SplitSpec(data.split_seed, data.valid_fraction, data.test_fraction)
    return with_split(DatasetKind.relevance, table, spec), sources


async def close(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    queue: LabelingQueue,
    data: QueueClose,
) -> QueueRead:
    """Write the labels as a new version of the queue's relevance dataset (merged with a base version when
    one is named) and close the queue, in one unit of work; the version's files go if it rolls back."""
    ctx.require(Action.write_datasets)
    status, _ = await _status(session, queue)
    if status != LabelingStatus.open:
        raise Conflict(f"the queue is {status.value}: only an open queue closes")
    answers = await repository.answers(session, queue.id)
    graded = _by_item(answers)
    if not graded:
        raise Conflict("nothing is labelled yet: label some pairs (or skip the queue) before closing it")
    name = data.dataset_name or queue.dataset_name
    base_id = data.base_dataset_version_id
    if base_id is None and queue.options.get("base_dataset_version_id"):
        base_id = uuid.UUID(queue.options["base_dataset_version_id"])
    base = await _relevance_version(session, ctx, base_id, "base_dataset_version_id") if base_id else None
    store = object_store(resources.settings)
    table, sources = await anyio.to_thread.run_sync(
        _rows, store, answers, base.tables if base else None, data
    )
    found = await anyio.to_thread.run_sync(agreement, graded, queue.min_grade, queue.max_grade)
    values = {
        "project_id": ctx.project.id,
        "name": name,
        "kind": DatasetKind.relevance.value,
        "format": "parquet",
        "description": data.description or "Relevance judgments from labelling queues.",
        "created_by": ctx.principal.user_id,
    }
    dataset, _ = await datasets_repository.ensure_dataset(session, values)
    if dataset.kind != DatasetKind.relevance.value:
        raise Conflict(f"dataset {name!r} holds {dataset.kind} data, not relevance: close into another name")
    digest = rows_hash(DatasetKind.relevance, table, data.split_seed)
    version = await datasets_repository.version_by_hash(session, dataset.id, digest)
    skipped = sum(1 for a in answers if a.status == AssignmentStatus.skipped.value)
    people = await repository.names(session, list(queue.labellers))
    if version is None:
        version_id = uuid.uuid4()
        relative = storage.version_dir(ctx.project.id, version_id)
        manifest = await anyio.to_thread.run_sync(
            storage.write_version, store, relative, {"relevance": table}
        )
        on_rollback(session, partial(storage.remove_version, store, relative))
        spec = splits.SplitSpec(data.split_seed, data.valid_fraction, data.test_fraction)
        described = stats.compute({"relevance": table}, DatasetKind.relevance)
        described["sources"] = sources
        version = DatasetVersion(
            id=version_id,
            dataset_id=dataset.id,
            version=await datasets_repository.next_version_number(session, dataset.id),
            content_hash=digest,
            format="parquet",
            source_filename=f"labelling queue {queue.id}",
            storage_path=relative,
            tables=manifest,
            row_count=table.num_rows,
            stats=described,
            splits=splits.summary(table, SPLIT_GROUP[DatasetKind.relevance], spec),
            split_seed=data.split_seed,
            lineage={
                "labeling_queue_id": str(queue.id),
                "queue": queue.name,
                "strategy": queue.strategy,
                "pool": queue.pool,
                "pool_dataset_version_id": str(queue.pool_dataset_version_id)
                if queue.pool_dataset_version_id
                else None,
                "selection_job_id": str(queue.selection_job_id) if queue.selection_job_id else None,
                "labellers": [{"user_id": str(u), "name": people.get(u)} for u in queue.labellers],
                "base_dataset_version_id": str(base.id) if base else None,
                "pairs_labelled": len(graded),
                "pairs_skipped": skipped,
            },
            created_by=ctx.principal.user_id,
        )
        session.add(version)
        await session.flush()
    queue.status = LabelingStatus.closed.value
    queue.dataset_version_id = version.id
    queue.closed_at = dt.datetime.now(dt.UTC)
    queue.closed_by = ctx.principal.user_id
    queue.report = {**queue.report, "agreement": found, "sources": sources, "pairs_skipped": skipped}
    await audit_change(
        session, ctx, "labeling_queue.close", "labeling_queue", queue.id, {"status": "open"},
        {"status": "closed", "dataset_version_id": str(version.id), "rows": version.row_count},
    )  # fmt: skip
    await session.flush()
    log.info(
        "labelling queue closed", extra={"queue_id": str(queue.id), "dataset_version_id": str(version.id)}
    )
    return await read(session, queue)
