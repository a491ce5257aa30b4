"""The other machines of a multi-node fine-tune (hyperparameter ``nodes`` > 1): ``recforge train-node``.

The job's worker is node 0 (services.trainer.finetune.distributed): when it starts training it stores the
payload its processes train from and announces it in the job's progress (``distributed``), which its
heartbeat writes to the job's row. A train-node polls Postgres for running jobs with an announcement,
takes a node rank with Redis INCR (one counter per job and run, so two nodes never take one rank, and a
job that has all its nodes is left alone), fetches the payload (its sha256 checked), makes it this
machine's (``localize``: the model from the base model, or the job's checkpoint from the store on a
resumed run; its own work folder) and runs torchrun with its rank against node 0's rendezvous until the
run ends. Only global rank 0, on node 0, reports progress and writes checkpoints and weights.

The payload is a pickle: the store is trusted as it is for checkpoints (only RecForge's workers write
there)."""

from __future__ import annotations

import asyncio
import logging
import pickle
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.trainer import checkpoint_store
from services.trainer.finetune.base import resolve_base_model
from services.trainer.finetune.checkpoint import checkpoint_model
from services.trainer.finetune.distributed import (
    RUN_DIR,
    DistributedTrainingFailed,
    Payload,
    Rendezvous,
    join,
)
from shared.config import Settings
from shared.db import create_engine, create_sessionmaker
from shared.errors import AppError
from shared.files import sha256_file
from shared.models import TrainingJob
from shared.models.enums import JobStatus
from shared.storage import ObjectStore, object_store

log = logging.getLogger("recforge.trainer.node")

POLL_S = 2.0  # how often a train-node looks for a job to join
RANK_TTL_S = 86400  # a run's rank counter outlives any run that could still be joined


class NodeError(AppError):
    """This node cannot take part in the run (the message says why)."""


@dataclass(frozen=True)
class Announcement:
    """What node 0 announced in its job's progress: its rendezvous and where the payload is."""

    job_id: uuid.UUID
    attempt: int
    nodes: int
    processes: int
    master_addr: str
    master_port: int
    key: str
    sha256: str

    @classmethod
    def of(cls, job_id: uuid.UUID, progress: dict[str, Any]) -> Announcement | None:
        """The announcement in a job's progress; None when there is none (or it is not one)."""
        value = progress.get("distributed")
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                job_id=job_id,
                attempt=int(value["attempt"]),
                nodes=int(value["nodes"]),
                processes=int(value["processes"]),
                master_addr=str(value["master_addr"]),
                master_port=int(value["master_port"]),
                key=str(value["payload"]["key"]),
                sha256=str(value["payload"]["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("a job's distributed announcement is malformed", extra={"job_id": str(job_id)})
            return None

    @property
    def rank_key(self) -> str:
        return f"recforge:node-rank:{self.job_id}:{self.attempt}"


@dataclass(frozen=True)
class Look:
    """What one look at the jobs found: the announced runs and, for a named job, whether it has ended
    (or never existed) so there is nothing left to join."""

    announced: list[Announcement] = field(default_factory=list)
    ended: str | None = None  # why the named job has nothing to join


async def look(sessionmaker: async_sessionmaker[Any], job_id: uuid.UUID | None) -> Look:
    query = select(TrainingJob.id, TrainingJob.status, TrainingJob.progress)
    if job_id is not None:
        query = query.where(TrainingJob.id == job_id)
    else:
        query = query.where(TrainingJob.status == JobStatus.running.value).order_by(TrainingJob.started_at)
    async with sessionmaker() as session:
        rows = (await session.execute(query)).all()
    if job_id is not None and not rows:
        raise NodeError(f"there is no training job {job_id}")
    announced: list[Announcement] = []
    ended = None
    for row_id, status, progress in rows:
        if status == JobStatus.running.value:
            found = Announcement.of(row_id, progress or {})
            if found is not None:
                announced.append(found)
        elif status != JobStatus.queued.value:
            ended = f"job {row_id} is {status}"
    return Look(announced, ended)


async def take_rank(redis: Redis, announcement: Announcement) -> int | None:
    """This node's rank in the announced run (1 to nodes - 1), or None when the run has all its nodes."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(announcement.rank_key)
        pipe.expire(announcement.rank_key, RANK_TTL_S)
        taken, _ = await pipe.execute()
    return int(taken) if int(taken) < announcement.nodes else None


def fetch_payload(store: ObjectStore, announcement: Announcement) -> Payload:
    """The announced payload, its content checked against the announced sha256."""
    path = store.fetch(announcement.key, announcement.sha256)
    try:
        found = sha256_file(path)
        if found != announcement.sha256:
            raise NodeError(
                f"the payload {announcement.key} does not match its announced sha256 ({found[:12]}..., "
                f"expected {announcement.sha256[:12]}...)"
            )
        with path.open("rb") as handle:
            payload = pickle.load(handle)
    finally:
        store.forget(announcement.key, announcement.sha256)
    if not isinstance(payload, Payload):
        raise NodeError(f"{announcement.key} holds no training payload")
    return payload


def localize(payload: Payload, settings: Settings, job_id: uuid.UUID, work: Path) -> Payload:
    """``payload`` with node 0's paths replaced by this machine's: ``work`` (emptied) as the work folder
    and, as the model, the job's checkpoint (fetched from the store into ``work``) on a resumed run, else
    the job's base model."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if not payload.resumed:
        if not payload.base_model:
            raise NodeError("the payload names no base model: was it made for one node?")
        return replace(payload, model_dir=resolve_base_model(payload.base_model), work=work)
    checkpoint_store.attach(work, settings, job_id)
    if not checkpoint_store.restore(work):
        shared = payload.work / "checkpoint"
        if not (shared / "state.pt").exists():  # a store that is the data dir: node 0's folder, if mounted
            raise NodeError(
                f"job {job_id} resumes from its checkpoint, which this node can reach neither in the "
                f"store ({settings.storage_location}) nor at {shared}"
            )
        shutil.copytree(shared, work / "checkpoint")
    model = checkpoint_model(work)
    if model is None:
        raise NodeError(f"the checkpoint of job {job_id} fetched into {work} is incomplete")
    return replace(payload, model_dir=str(model), work=work)


def run_node(settings: Settings, announcement: Announcement, rank: int) -> None:
    """Train as node ``rank`` of the announced run until it ends. Raises NodeError when this node cannot
    take part, DistributedTrainingFailed when the run fails."""
    work = settings.cache_dir / "train-node" / f"{announcement.job_id}-{announcement.attempt}-{rank}"
    try:
        payload = fetch_payload(object_store(settings), announcement)
        if payload.hp.nodes != announcement.nodes or payload.hp.processes != announcement.processes:
            raise NodeError("the payload's nodes and processes are not the announced ones")
        payload = localize(payload, settings, announcement.job_id, work)
        rendezvous = Rendezvous(announcement.nodes, rank, announcement.master_addr, announcement.master_port)
        join(payload, work / RUN_DIR, rendezvous)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Connections:
    engine: AsyncEngine
    redis: Redis


def serve(settings: Settings, job_id: uuid.UUID | None, *, once: bool, poll_s: float = POLL_S) -> int:
    """Join announced runs one after another: any job's or, with ``job_id``, that job's until it ends
    (each run of it: a retried job announces its next run). With ``once``: return after the first run
    this node joined (1 if it failed) or, with ``job_id``, when that run has all its nodes."""
    with asyncio.Runner() as runner:  # one loop for every look; training runs in this thread, between
        connections = runner.run(_connect(settings))
        try:
            return _serve(runner, connections, settings, job_id, once=once, poll_s=poll_s)
        finally:
            runner.run(_close(connections))


async def _connect(settings: Settings) -> _Connections:
    return _Connections(create_engine(settings, pool_size=1), Redis.from_url(settings.resolved_redis_url()))


async def _close(connections: _Connections) -> None:
    await connections.redis.aclose()
    await connections.engine.dispose()


def _serve(
    runner: asyncio.Runner,
    connections: _Connections,
    settings: Settings,
    job_id: uuid.UUID | None,
    *,
    once: bool,
    poll_s: float,
) -> int:
    sessionmaker = create_sessionmaker(connections.engine)
    skipped: set[str] = set()  # runs joined, or found with all their nodes: not counted again
    log.info("train-node waiting for a multi-node job", extra={"job_id": str(job_id) if job_id else None})
    while True:
        found = runner.run(look(sessionmaker, job_id))
        for announcement in found.announced:
            if announcement.rank_key in skipped:
                continue
            rank = runner.run(take_rank(connections.redis, announcement))
            if rank is None:
                skipped.add(announcement.rank_key)
                log.info(
                    "the job has all its nodes: not joining",
                    extra={"job_id": str(announcement.job_id), "attempt": announcement.attempt},
                )
                if job_id is not None and once:
                    return 0
                continue
            ok = _join(settings, announcement, rank)
            skipped.add(announcement.rank_key)  # this run is done with
            if once:
                return 0 if ok else 1
        if found.ended is not None:
            log.info("nothing to join: %s", found.ended, extra={"job_id": str(job_id)})
            return 0
        runner.run(asyncio.sleep(poll_s))


def _join(settings: Settings, announcement: Announcement, rank: int) -> bool:
    job = {"job_id": str(announcement.job_id), "attempt": announcement.attempt, "node_rank": rank}
    log.info(
        "joining job as node %d of %d (%d processes each), rendezvous %s:%d",
        rank,
        announcement.nodes,
        announcement.processes,
        announcement.master_addr,
        announcement.master_port,
        extra=job,
    )
    try:
        run_node(settings, announcement, rank)
    except (NodeError, DistributedTrainingFailed) as exc:
        log.error("node %d of the job failed: %s", rank, exc, extra=job)
        return False
    except Exception:
        log.exception("node %d of the job failed", rank, extra=job)
        return False
    log.info("node %d of the job finished its training", rank, extra=job)
    return True
