"""The job store: every read and write the trainer makes to a training job's row, and the model versions
it registers. Postgres holds the truth about a job; each method is one unit of work.

A job is claimed under a row lock, so two workers never run it at once; the claim says what the job
reads (its data, the project's catalog, the model version it works on). While it runs, heartbeats
write its progress and the compute it used; it ends succeeded (a new model version, or a result on the
version it worked on), failed, cancelled, or handed back to the queue when its worker stops."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, select, text, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.artifacts import stored_files
from shared.datasets.catalog import latest_catalog_version
from shared.db import unit_of_work
from shared.feedback import Action, Served
from shared.integrations import lifecycle_comment
from shared.labeling import Candidate, assign
from shared.models import (
    Dataset,
    DatasetVersion,
    JiraConnection,
    JiraOutbox,
    LabelingAssignment,
    LabelingItem,
    LabelingQueue,
    ModelVersion,
    Project,
    Task,
    TrainingJob,
)
from shared.models.enums import (
    AssignmentPolicy,
    AssignmentStatus,
    DatasetKind,
    JiraAction,
    JobStatus,
    JobType,
    LabelingStatus,
    ModelStatus,
    WebhookEvent,
)
from shared.training import NEEDS_MODEL, TASK_OF


@dataclass(frozen=True)
class JobRef:
    """What the queue knows a job by (its arq id is made from these)."""

    id: uuid.UUID
    retries: int
    priority: int
    attempts: int

    @classmethod
    def of(cls, job: TrainingJob) -> JobRef:
        return cls(job.id, job.retries, job.priority, job.attempts)


class Refusal(StrEnum):
    gone = "gone"  # the job no longer exists
    not_queued = "not queued"  # it runs elsewhere, or has ended
    project_full = "project full"  # its project runs as many jobs as it may: try again shortly
    failed = "failed"  # it cannot run (no runs left, or its inputs are gone): now failed


@dataclass(frozen=True)
class NotClaimed:
    reason: Refusal
    detail: str
    job: JobRef | None = None


@dataclass
class Claimed:
    """A job this worker now runs, and what it reads."""

    job: TrainingJob
    worker_id: str
    kind: DatasetKind | None  # the data's kind; None for an index job (catalog only)
    tables: dict[str, Any]  # the dataset version's tables (an index job: the catalog's)
    catalog_tables: dict[str, Any] | None  # the project's catalog when `tables` has none
    catalog_version_id: uuid.UUID | None  # the catalog an index job embeds
    model_version: ModelVersion | None  # what an evaluate, export or index job works on
    compute_before: float  # seconds earlier runs of the job used
    attempt: int = 0  # this run's number: with worker_id, what says the job is still this run's

    @property
    def job_type(self) -> JobType:
        return JobType(self.job.job_type)

    def owned(self) -> tuple[Any, ...]:
        """The row conditions under which the job is still this run's: running, on this worker, in
        this attempt. Every write a run makes to its job carries them, so a run that was reaped or taken
        over changes nothing (and registers nothing)."""
        return (
            TrainingJob.id == self.job.id,
            TrainingJob.status == JobStatus.running.value,
            TrainingJob.worker_id == self.worker_id,
            TrainingJob.attempts == self.attempt,
        )


@dataclass(frozen=True)
class Beat:
    owned: bool  # False: the job was reaped or taken over; this run must stop
    cancel_requested: bool


@dataclass(frozen=True)
class NewVersion:
    """A fine-tune's model, registered as the project's next model version."""

    id: uuid.UUID
    metrics: dict[str, Any]
    baselines: dict[str, Any]
    artifacts: dict[str, Any]  # file entries with their store keys
    config: dict[str, Any]
    compute: dict[str, Any]
    library_versions: dict[str, str]
    git: dict[str, Any]  # commit, branch, remote, dirty (provenance.git_state)
    duration_s: float
    steps: int
    warnings: tuple[str, ...] = ()  # what the job's result warns about (a validation split too small)


@dataclass(frozen=True)
class VersionResult:
    """What an evaluate, export or index job found, and what it adds to the version it worked on."""

    result: dict[str, Any]
    progress: dict[str, Any]
    artifacts: dict[str, Any] | None = None  # file entries merged into the version's artifacts
    rebuild: dict[str, Any] | None = None  # an export's report, kept in the version's compute
    staged: tuple[Path, ...] = ()  # files written for `artifacts`: removed if the result is not recorded
    obsolete: tuple[Path, ...] = ()  # files `artifacts` replaces: removed once it is recorded


@dataclass(frozen=True)
class NewDataset:
    """One dataset version a feedback job wrote (its files are in place; its row is not yet)."""

    name: str
    kind: DatasetKind
    version_id: uuid.UUID
    storage_path: str  # the version's folder of keys in the object store
    tables: dict[str, Any]  # the manifest
    row_count: int
    content_hash: str
    stats: dict[str, Any]
    splits: dict[str, Any]
    split_seed: int
    lineage: dict[str, Any]


@dataclass(frozen=True)
class NewDatasets:
    """What a feedback job made: dataset versions, and a result for the job's row."""

    datasets: tuple[NewDataset, ...]
    result: dict[str, Any]
    progress: dict[str, Any]


@dataclass(frozen=True)
class NewLabelingItems:
    """What a labelling queue's selection job chose: the pairs in order, with the strategy's score and
    each ranker's score of each."""

    queue_id: uuid.UUID
    items: tuple[Candidate, ...]
    scores: tuple[float, ...]
    signals: tuple[dict[str, float], ...]
    result: dict[str, Any]
    progress: dict[str, Any]


class DatasetClash(Exception):
    """A dataset of the name exists with another kind."""


@dataclass(frozen=True)
class LiveRuns:
    """The jobs one worker is running now: never reaped by that worker."""

    worker_id: str
    job_ids: frozenset[uuid.UUID]


@dataclass(frozen=True)
class Reaped:
    requeued: list[JobRef]  # running jobs whose worker went silent: queued again to resume
    failed: list[uuid.UUID]  # the same, on their last allowed run: failed
    waiting: list[JobRef]  # queued for over a minute: the queue may have lost them


@dataclass(frozen=True)
class LiveOutputs:
    """What the rows say is in use on disk (the janitor removes the rest)."""

    jobs: set[uuid.UUID]  # queued or running jobs: their work folders hold what a run resumes from
    planned: set[uuid.UUID]  # the version folders queued or running fine-tunes write
    busy: set[uuid.UUID]  # versions a queued or running export or index job writes into
    versions: dict[uuid.UUID, set[str]]  # registered versions and their files' store keys


def _paths(artifacts: dict[str, Any]) -> set[str]:
    return {str(entry["path"]) for entry in stored_files(artifacts)}


class _CannotRun(Exception):
    pass


class JobStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]):
        self.sessionmaker = sessionmaker

    async def claim(self, job_id: uuid.UUID, worker_id: str, max_attempts: int) -> Claimed | NotClaimed:
        """Take the job if it is queued and its project has room; else say why not."""
        async with unit_of_work(self.sessionmaker) as session:
            job = (
                await session.execute(select(TrainingJob).where(TrainingJob.id == job_id).with_for_update())
            ).scalar_one_or_none()
            if job is None:
                return NotClaimed(Refusal.gone, "gone")
            if job.status != JobStatus.queued.value:
                return NotClaimed(Refusal.not_queued, f"already {job.status}")
            project = (
                await session.execute(select(Project).where(Project.id == job.project_id).with_for_update())
            ).scalar_one()
            running = (
                await session.execute(
                    select(func.count()).where(
                        TrainingJob.project_id == project.id, TrainingJob.status == JobStatus.running.value
                    )
                )
            ).scalar_one()
            if running >= project.max_concurrent_jobs:
                return NotClaimed(
                    Refusal.project_full, "waiting for a free slot in the project", JobRef.of(job)
                )
            try:
                if job.attempts >= max_attempts:
                    raise _CannotRun(f"gave up after {job.attempts} runs that did not finish")
                claimed = await self._inputs(session, job, worker_id)
            except _CannotRun as exc:
                job.status = JobStatus.failed.value
                job.error = str(exc)
                job.finished_at = func.now()
                return NotClaimed(Refusal.failed, "failed")
            job.status = JobStatus.running.value
            job.worker_id = worker_id
            job.attempts += 1
            job.started_at = job.started_at or func.now()
            job.heartbeat_at = func.now()
            job.progress = {**(job.progress or {}), "phase": "starting"}
            await session.flush()
            await session.refresh(job)
            claimed.job = job
            claimed.compute_before = job.compute_seconds
            claimed.attempt = job.attempts
            return claimed

    async def _inputs(self, session: AsyncSession, job: TrainingJob, worker_id: str) -> Claimed:
        """What the job reads; _CannotRun says why it cannot run."""
        job_type = JobType(job.job_type)
        version = None
        if job_type in NEEDS_MODEL:
            version = await session.get(ModelVersion, job.input_model_version_id)
            if version is None or "model" not in (version.artifacts or {}):
                raise _CannotRun("its model version is gone or has no ONNX graph")
        elif job_type not in TASK_OF and job_type not in (JobType.feedback, JobType.labeling):
            raise _CannotRun(f"{job.job_type} jobs are not run by this trainer version")

        def claimed(
            kind: DatasetKind | None,
            tables: dict[str, Any],
            catalog_tables: dict[str, Any] | None = None,
            catalog_version_id: uuid.UUID | None = None,
        ) -> Claimed:
            return Claimed(
                job=job,
                worker_id=worker_id,
                kind=kind,
                tables=tables,
                catalog_tables=catalog_tables,
                catalog_version_id=catalog_version_id,
                model_version=version,
                compute_before=0.0,
            )

        if job_type == JobType.index_catalog:
            if job.dataset_version_id is None:
                catalog = await latest_catalog_version(session, job.project_id)
                if catalog is None:
                    raise _CannotRun("the project has no catalog to index: import one first")
                return claimed(None, catalog.tables, catalog_version_id=catalog.id)
            found = await self._dataset_version(session, job.dataset_version_id)
            if found is None or "catalog" not in found[0].tables:
                raise _CannotRun("its dataset version is gone or holds no catalog")
            return claimed(None, found[0].tables, catalog_version_id=found[0].id)
        if job_type == JobType.feedback:  # reads the logs; a base version is merged in
            catalog = await latest_catalog_version(session, job.project_id)
            base: dict[str, Any] = {}
            if job.dataset_version_id is not None:
                found = await self._dataset_version(session, job.dataset_version_id)
                if found is None:
                    raise _CannotRun("its base dataset version is gone")
                base = found[0].tables
            return claimed(DatasetKind.relevance, base, catalog.tables if catalog else None)
        if job_type == JobType.labeling:  # the pool's version (none for searches) and the catalog
            catalog = await latest_catalog_version(session, job.project_id)
            pool: dict[str, Any] = {}
            if job.dataset_version_id is not None:
                found = await self._dataset_version(session, job.dataset_version_id)
                if found is None:
                    raise _CannotRun("its pool's dataset version is gone")
                pool = found[0].tables
            return claimed(DatasetKind.relevance, pool, catalog.tables if catalog else None)
        # an export checks its version on the version's own training data
        source = (
            version.dataset_version_id if job_type == JobType.export and version else job.dataset_version_id
        )
        found = await self._dataset_version(session, source)
        if found is None:
            raise _CannotRun("its dataset version is gone")
        data, dataset = found
        if "catalog" in data.tables:
            return claimed(DatasetKind(dataset.kind), data.tables)
        catalog = await latest_catalog_version(session, job.project_id)
        return claimed(DatasetKind(dataset.kind), data.tables, catalog.tables if catalog else None)

    @staticmethod
    async def _dataset_version(
        session: AsyncSession, version_id: uuid.UUID | None
    ) -> tuple[DatasetVersion, Dataset] | None:
        row = (
            await session.execute(
                select(DatasetVersion, Dataset)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(DatasetVersion.id == version_id)
            )
        ).one_or_none()
        return (row[0], row[1]) if row else None

    async def set_device(self, claimed: Claimed, device: str) -> bool:
        """Record where the job runs; False when the job is no longer this run's."""
        async with unit_of_work(self.sessionmaker) as session:
            found = await session.execute(
                update(TrainingJob).where(*claimed.owned()).values(device=device).returning(TrainingJob.id)
            )
            return found.first() is not None

    async def heartbeat(
        self, claimed: Claimed, progress: dict[str, Any], compute_seconds: float, delta_s: float, gpu: bool
    ) -> Beat:
        """Write progress, the heartbeat and the compute used, and charge the project for the time since
        the last beat, while the job is this run's."""
        async with unit_of_work(self.sessionmaker) as session:
            result = await session.execute(
                update(TrainingJob)
                .where(*claimed.owned())
                .values(progress=progress, heartbeat_at=func.now(), compute_seconds=compute_seconds)
                .returning(TrainingJob.cancel_requested_at)
            )
            row = result.first()
            if row is None:
                return Beat(owned=False, cancel_requested=False)
            column = Project.used_gpu_hours if gpu else Project.used_cpu_hours
            await session.execute(
                update(Project)
                .where(Project.id == claimed.job.project_id)
                .values({column: column + delta_s / 3600})
            )
        return Beat(owned=True, cancel_requested=row[0] is not None)

    async def cancel_requested(self, job_id: uuid.UUID) -> bool:
        async with self.sessionmaker() as session:
            found = await session.execute(
                select(TrainingJob.cancel_requested_at).where(TrainingJob.id == job_id)
            )
            return found.scalar_one_or_none() is not None

    async def finish(
        self,
        claimed: Claimed,
        status: JobStatus,
        *,
        error: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """End the job failed or cancelled; False (and nothing changed) when it is no longer this run's."""
        values: dict[str, Any] = {
            "status": status.value,
            "finished_at": func.now(),
            "heartbeat_at": func.now(),
            "error": error,
        }
        if progress is not None:
            values["progress"] = progress
        async with unit_of_work(self.sessionmaker) as session:
            found = await session.execute(
                update(TrainingJob).where(*claimed.owned()).values(**values).returning(TrainingJob.id)
            )
            ended = found.first() is not None
            if ended and status == JobStatus.failed:
                await self._tell_jira(session, claimed.job, error)
            return ended

    @staticmethod
    async def _tell_jira(session: AsyncSession, job: TrainingJob, error: str | None) -> None:
        """A failed job as a comment on the Jira issue of each task linked to it (the api's sync loop
        makes the call), when the project has a Jira connection."""
        connection = (
            await session.execute(
                select(JiraConnection).where(
                    JiraConnection.project_id == job.project_id, JiraConnection.enabled
                )
            )
        ).scalar_one_or_none()
        if connection is None:
            return
        tasks = await session.execute(
            select(Task.id).where(Task.project_id == job.project_id, Task.training_job_id == job.id)
        )
        text = lifecycle_comment(WebhookEvent.job_failed, {"error": error, "job_id": job.id})
        for task_id in tasks.scalars():
            session.add(
                JiraOutbox(
                    connection_id=connection.id,
                    project_id=job.project_id,
                    task_id=task_id,
                    action=JiraAction.comment.value,
                    payload={"text": text, "event": WebhookEvent.job_failed.value},
                )
            )

    async def hand_back(self, claimed: Claimed, reason: str) -> bool:
        """Queue the job again now (its checkpoint stays) rather than leave it `running` until the reaper
        notices the silence: the worker is stopping, or lost the database. False when the job is no
        longer this run's."""
        async with unit_of_work(self.sessionmaker) as session:
            found = await session.execute(
                update(TrainingJob)
                .where(*claimed.owned())
                .values(status=JobStatus.queued.value, worker_id=None, error=reason)
                .returning(TrainingJob.id)
            )
            return found.first() is not None

    @staticmethod
    async def _succeed(
        session: AsyncSession, claimed: Claimed, progress: dict[str, Any], **values: Any
    ) -> bool:
        """End the job succeeded, if it is still this run's."""
        found = await session.execute(
            update(TrainingJob)
            .where(*claimed.owned())
            .values(
                status=JobStatus.succeeded.value,
                finished_at=func.now(),
                error=None,
                progress=progress,
                **values,
            )
            .returning(TrainingJob.id)
        )
        return found.first() is not None

    async def register(
        self, claimed: Claimed, new: NewVersion, history: dict[str, Any] | None = None
    ) -> bool:
        """Register a fine-tune's model as the project's next version and end the job succeeded, both or
        neither: False (and nothing written) when the job is no longer this run's. ``history``: the
        phases and loss curve the run recorded, kept in the job's final progress."""
        job = claimed.job
        async with unit_of_work(self.sessionmaker) as session:
            await session.execute(select(Project.id).where(Project.id == job.project_id).with_for_update())
            progress = {**(history or {}), "phase": "done", "step": new.steps, "total_steps": new.steps}
            result = {"warnings": list(new.warnings)} if new.warnings else None
            if not await self._succeed(session, claimed, progress, result=result):
                return False
            number = (
                await session.execute(
                    select(func.coalesce(func.max(ModelVersion.version), 0)).where(
                        ModelVersion.project_id == job.project_id
                    )
                )
            ).scalar_one() + 1
            session.add(
                ModelVersion(
                    id=new.id,
                    project_id=job.project_id,
                    version=number,
                    task_type=TASK_OF[claimed.job_type].value,
                    status=ModelStatus.candidate.value,
                    base_model=job.base_model or "",
                    training_job_id=job.id,
                    dataset_version_id=job.dataset_version_id,
                    parent_model_version_id=job.input_model_version_id,
                    hyperparameters=job.hyperparameters,
                    config=new.config,
                    metrics=new.metrics,
                    baselines=new.baselines,
                    artifacts=new.artifacts,
                    library_versions=new.library_versions,
                    git_commit=new.git.get("commit"),
                    git=new.git,
                    duration_s=round(new.duration_s, 2),
                    compute=new.compute,
                )
            )
        return True

    async def complete(self, claimed: Claimed, outcome: VersionResult) -> bool:
        """Store an evaluate/export/index job's result and, for export and index, the version's new
        files; end the job succeeded. False (and nothing written) when the job is no longer this run's."""
        version = claimed.model_version
        assert version is not None
        async with unit_of_work(self.sessionmaker) as session:
            progress = {**outcome.progress, "phase": "done"}
            if not await self._succeed(session, claimed, progress, result=outcome.result):
                return False
            if outcome.artifacts or outcome.rebuild:
                row = (
                    await session.execute(
                        select(ModelVersion).where(ModelVersion.id == version.id).with_for_update()
                    )
                ).scalar_one()
                if outcome.artifacts:
                    row.artifacts = {**row.artifacts, **outcome.artifacts}
                if outcome.rebuild:
                    export = {**row.compute.get("export", {}), "rebuild": outcome.rebuild}
                    row.compute = {**row.compute, "export": export}
        return True

    async def feedback_window(
        self, project_id: uuid.UUID, start: Any, end: Any
    ) -> tuple[list[Served], list[Action]]:
        """What the project served in [start, end), and the clicks, carts and purchases that came of it
        (by request id, whenever they arrived) or happened in the window (for shoppers' sequences)."""
        window = {"project_id": project_id, "start": start, "end": end}
        async with self.sessionmaker() as session:
            served = [
                Served(*row)
                for row in await session.execute(
                    text(
                        "SELECT request_id, query, user_id, product_ids FROM impressions"
                        " WHERE project_id = :project_id AND served_at >= :start AND served_at < :end"
                        " ORDER BY served_at, id"
                    ),
                    window,
                )
            ]
            actions = [
                Action(*row)
                for row in await session.execute(
                    text(
                        "SELECT e.request_id, e.product_id, e.event_type, e.user_id, e.occurred_at"
                        " FROM events e WHERE e.project_id = :project_id"
                        " AND e.event_type IN ('click', 'cart', 'purchase')"
                        " AND ((e.occurred_at >= :start AND e.occurred_at < :end) OR e.request_id IN ("
                        "   SELECT i.request_id FROM impressions i WHERE i.project_id = :project_id"
                        "   AND i.served_at >= :start AND i.served_at < :end))"
                        " ORDER BY e.occurred_at, e.id"
                    ),
                    window,
                )
            ]
        return served, actions

    async def record_datasets(self, claimed: Claimed, outcome: NewDatasets) -> dict[uuid.UUID, bool] | None:
        """Store a feedback job's dataset versions and end the job succeeded, all or nothing. A version
        whose content a version of its dataset already holds is not stored twice: that one is named in
        the result instead. Returns, per version written, whether it was stored (False: a twin was
        found, its files are not needed); None (and nothing written) when the job is no longer this
        run's. Raises DatasetClash when a dataset of the name holds another kind of data."""
        job = claimed.job
        stored: dict[uuid.UUID, bool] = {}
        outputs: list[dict[str, Any]] = []
        async with unit_of_work(self.sessionmaker) as session:
            await session.execute(select(Project.id).where(Project.id == job.project_id).with_for_update())
            for new in outcome.datasets:
                dataset = (
                    await session.execute(
                        select(Dataset).where(Dataset.project_id == job.project_id, Dataset.name == new.name)
                    )
                ).scalar_one_or_none()
                if dataset is None:
                    dataset = Dataset(
                        project_id=job.project_id,
                        name=new.name,
                        kind=new.kind.value,
                        format="parquet",
                        description="Made from shoppers' feedback by feedback jobs.",
                        created_by=job.created_by,
                    )
                    session.add(dataset)
                    await session.flush()
                elif dataset.kind != new.kind.value:
                    raise DatasetClash(
                        f"dataset {new.name!r} holds {dataset.kind} data, not {new.kind.value}: "
                        "give the feedback job another name"
                    )
                twin = (
                    await session.execute(
                        select(DatasetVersion).where(
                            DatasetVersion.dataset_id == dataset.id,
                            DatasetVersion.content_hash == new.content_hash,
                        )
                    )
                ).scalar_one_or_none()
                if twin is None:
                    number = (
                        await session.execute(
                            select(func.coalesce(func.max(DatasetVersion.version), 0)).where(
                                DatasetVersion.dataset_id == dataset.id
                            )
                        )
                    ).scalar_one() + 1
                    twin = DatasetVersion(
                        id=new.version_id,
                        dataset_id=dataset.id,
                        version=number,
                        content_hash=new.content_hash,
                        format="parquet",
                        source_filename=f"feedback job {job.id}",
                        storage_path=new.storage_path,
                        tables=new.tables,
                        row_count=new.row_count,
                        stats=new.stats,
                        splits=new.splits,
                        split_seed=new.split_seed,
                        lineage=new.lineage,
                        created_by=job.created_by,
                    )
                    session.add(twin)
                    await session.flush()
                stored[new.version_id] = twin.id == new.version_id
                outputs.append(
                    {
                        "kind": new.kind.value,
                        "dataset_id": str(dataset.id),
                        "name": new.name,
                        "dataset_version_id": str(twin.id),
                        "version": twin.version,
                        "rows": twin.row_count,
                        "created": stored[new.version_id],
                    }
                )
            result = {**outcome.result, "dataset_versions": outputs}
            if not await self._succeed(
                session, claimed, {**outcome.progress, "phase": "done"}, result=result
            ):
                await session.rollback()
                return None
        return stored

    async def dataset_tables(self, version_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
        """The tables of these dataset versions (those that still exist)."""
        if not version_ids:
            return []
        async with self.sessionmaker() as session:
            found = await session.execute(
                select(DatasetVersion.tables).where(DatasetVersion.id.in_(version_ids))
            )
            return [tables for (tables,) in found]

    async def model_versions(self, version_ids: list[uuid.UUID]) -> dict[uuid.UUID, ModelVersion]:
        """These model versions, those that exist and have an ONNX graph."""
        if not version_ids:
            return {}
        async with self.sessionmaker() as session:
            found = (
                await session.execute(select(ModelVersion).where(ModelVersion.id.in_(version_ids)))
            ).scalars()
            return {version.id: version for version in found if "model" in (version.artifacts or {})}

    async def record_labeling(self, claimed: Claimed, outcome: NewLabelingItems) -> bool:
        """Write a selection job's pairs into its queue, share them among the queue's labellers, open the
        queue and end the job succeeded, all or nothing. False (nothing written) when the job is no
        longer this run's; a queue that is no longer being built keeps what it has."""
        async with unit_of_work(self.sessionmaker) as session:
            queue = await session.get(LabelingQueue, outcome.queue_id, with_for_update=True)
            if queue is not None and queue.status == LabelingStatus.building.value:
                load: dict[uuid.UUID, int] = {}
                if queue.assignment == AssignmentPolicy.least_loaded.value:
                    waiting = await session.execute(
                        select(LabelingAssignment.user_id, func.count())
                        .join(LabelingQueue, LabelingQueue.id == LabelingAssignment.queue_id)
                        .where(
                            LabelingQueue.project_id == queue.project_id,
                            LabelingQueue.status == LabelingStatus.open.value,
                            LabelingAssignment.status == AssignmentStatus.pending.value,
                        )
                        .group_by(LabelingAssignment.user_id)
                    )
                    load = {user: int(count) for user, count in waiting}
                who = assign(
                    len(outcome.items), queue.labellers, queue.labels_per_item, queue.assignment, load
                )
                rows = [
                    {
                        "id": uuid.uuid4(),
                        "queue_id": queue.id,
                        "project_id": queue.project_id,
                        "position": position,
                        "query": item.query[:1000],
                        "product_id": item.product_id,
                        "product_text": item.product_text[:4000],
                        "score": score,
                        "signals": signals,
                    }
                    for position, (item, score, signals) in enumerate(
                        zip(outcome.items, outcome.scores, outcome.signals, strict=True), start=1
                    )
                ]
                for start in range(0, len(rows), 1000):
                    await session.execute(insert(LabelingItem), rows[start : start + 1000])
                given = [
                    {"queue_id": queue.id, "item_id": row["id"], "user_id": user, "position": row["position"]}
                    for row, people in zip(rows, who, strict=True)
                    for user in people
                ]
                for start in range(0, len(given), 1000):
                    await session.execute(insert(LabelingAssignment), given[start : start + 1000])
                queue.status = LabelingStatus.open.value
                queue.report = {"selection": outcome.result}
            if not await self._succeed(
                session, claimed, {**outcome.progress, "phase": "done"}, result=outcome.result
            ):
                await session.rollback()
                return False
        return True

    async def note_output(self, claimed: Claimed, version_id: uuid.UUID) -> bool:
        """Record, before its files are written, the version folder this run's fine-tune fills, so the
        janitor knows it is in use. False when the job is no longer this run's."""
        async with unit_of_work(self.sessionmaker) as session:
            found = await session.execute(
                update(TrainingJob)
                .where(*claimed.owned())
                .values(
                    progress=TrainingJob.progress.op("||")(
                        type_coerce({"output_version_id": str(version_id)}, JSONB)
                    )
                )
                .returning(TrainingJob.id)
            )
            return found.first() is not None

    async def live_outputs(self) -> LiveOutputs:
        active = (JobStatus.queued.value, JobStatus.running.value)
        async with self.sessionmaker() as session:
            jobs = (
                await session.execute(
                    select(
                        TrainingJob.id,
                        TrainingJob.job_type,
                        TrainingJob.input_model_version_id,
                        TrainingJob.progress,
                    ).where(TrainingJob.status.in_(active))
                )
            ).all()
            versions = (await session.execute(select(ModelVersion.id, ModelVersion.artifacts))).all()
        planned = set()
        for _, _, _, progress in jobs:
            with contextlib.suppress(ValueError, TypeError):
                planned.add(uuid.UUID(str((progress or {}).get("output_version_id"))))
        return LiveOutputs(
            jobs={job_id for job_id, _, _, _ in jobs},
            planned=planned,
            busy={model for _, kind, model, _ in jobs if model is not None and kind in ("export", "index")},
            versions={version_id: _paths(artifacts or {}) for version_id, artifacts in versions},
        )

    async def waiting_jobs(self, project_id: uuid.UUID) -> list[JobRef]:
        """The project's queued jobs, highest priority first."""
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(TrainingJob)
                .where(TrainingJob.project_id == project_id, TrainingJob.status == JobStatus.queued.value)
                .order_by(TrainingJob.priority.desc(), TrainingJob.queued_at)
            )
            return [JobRef.of(job) for job in rows.scalars()]

    async def reap(
        self,
        stale_after: timedelta,
        max_attempts: int,
        lost_after: timedelta = timedelta(minutes=1),
        *,
        live: LiveRuns | None = None,
    ) -> Reaped:
        """Queue again the running jobs whose worker stopped sending heartbeats (fail those on their last
        allowed run), and list the jobs queued for over ``lost_after``, which the queue may have lost.

        ``live``: the runs of the reaping worker itself. They are alive, however late their last
        heartbeat: a stalled event loop is late with its beats and with this reaper alike, and taking a
        job from a run that is still going would only start it a third time."""
        requeued: list[JobRef] = []
        failed: list[uuid.UUID] = []
        silent = int(stale_after.total_seconds())
        async with unit_of_work(self.sessionmaker) as session:
            query = select(TrainingJob).where(
                TrainingJob.status == JobStatus.running.value,
                TrainingJob.heartbeat_at < func.now() - stale_after,
            )
            if live is not None and live.job_ids:
                query = query.where(
                    ~and_(TrainingJob.worker_id == live.worker_id, TrainingJob.id.in_(live.job_ids))
                )
            stale = (await session.execute(query.with_for_update(skip_locked=True))).scalars()
            for job in stale:
                if job.attempts >= max_attempts:
                    job.status = JobStatus.failed.value
                    job.error = f"worker vanished (no heartbeat for {silent} s) on its last allowed run"
                    job.finished_at = func.now()
                    failed.append(job.id)
                else:
                    job.status = JobStatus.queued.value
                    job.worker_id = None
                    job.error = (
                        f"worker vanished (no heartbeat for {silent} s); resuming from the last checkpoint"
                    )
                    requeued.append(JobRef.of(job))
            waiting = (
                await session.execute(
                    select(TrainingJob).where(
                        TrainingJob.status == JobStatus.queued.value,
                        TrainingJob.queued_at < func.now() - lost_after,
                    )
                )
            ).scalars()
            again = {ref.id for ref in requeued}
            lost = [JobRef.of(job) for job in waiting if job.id not in again]
        return Reaped(requeued=requeued, failed=failed, waiting=lost)
