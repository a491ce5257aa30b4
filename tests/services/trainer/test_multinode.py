"""Fine-tuning on several machines, played on this one: node 0 is fit_distributed in the test's process (as
a job's worker runs it), node 1 a real `recforge train-node` subprocess with its own cache folder; real
torchrun (static rendezvous on 127.0.0.1), real gloo, a real job row in Postgres, a rank counter in Redis,
the payload in a folder store. The test plays the worker's heartbeat: it copies the job's progress into
the row, where train-node finds the announcement."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.control import JobControl
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.distributed import (
    DistributedTrainingFailed,
    MultiNode,
    TaskFactory,
    fit_distributed,
    multi_node,
)
from services.trainer.finetune.loop import TrainResult
from shared.config import Settings
from shared.models import TrainingJob
from shared.models.enums import JobStatus, JobType
from shared.storage import ObjectStore
from shared.training import Hyperparameters
from tests.factories import create_project, create_user
from tests.services.trainer.test_distributed import LOSS_TOLERANCE, _build, _close, _one_process
from tests.support.distributed import fails_in_process_1, shop, without_dropout
from tests.support.models import tiny_bert
from tests.support.processes import CLI, cli_env, free_port, recforge

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = tiny_bert(tmp_path_factory.mktemp("tiny"))
    return str(without_dropout(str(source), tmp_path_factory.mktemp("tiny-no-dropout")))


async def _running_job(
    session: AsyncSession, hp: Hyperparameters, base_model: str, **fields: Any
) -> uuid.UUID:
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    job = TrainingJob(
        project_id=project.id,
        job_type=JobType.bi_encoder.value,
        base_model=base_model,
        hyperparameters=hp.model_dump(),
        status=JobStatus.running.value,
        attempts=1,
        worker_id="node-0",
        **fields,
    )
    session.add(job)
    await session.commit()
    return job.id


def _node_env(settings: Settings, store: Path, cache: Path) -> dict[str, str]:
    return cli_env(
        settings,
        RECFORGE_STORAGE_URL=f"file://{store}",
        RECFORGE_LOCAL_CACHE_DIR=str(cache),
        RECFORGE_LOG_FORMAT="console",
        HF_HUB_OFFLINE="1",
    )


@dataclass
class TwoNodes:
    control: JobControl
    result: TrainResult | BaseException
    announced: dict[str, Any] | None  # what node 0 announced in the job's progress
    node_1_code: int | None
    node_1_output: str


async def _two_nodes(
    build: TaskFactory,
    model_dir: str,
    hp: Hyperparameters,
    tmp_path: Path,
    settings: Settings,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> TwoNodes:
    """Node 1 is `recforge train-node --job JOB --once`; node 0 is fit_distributed here, with the job's
    worker's heartbeat played by copying its progress into the job's row."""
    job_id = await _running_job(session, hp, model_dir)
    store = tmp_path / "store"
    node_1 = await asyncio.create_subprocess_exec(
        *CLI,
        *("train-node", "--job", str(job_id), "--once"),
        env=_node_env(settings, store, tmp_path / "node-1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        control = JobControl()
        multi_node = MultiNode(
            nodes=2,
            master_addr="127.0.0.1",
            master_port=free_port(),
            job_id=job_id,
            attempt=1,
            store=ObjectStore(f"file://{store}", tmp_path / "node-0-cache"),
            base_model=model_dir,
        )
        task = build(model_dir)
        if isinstance(task, BiEncoderTask):
            task.mine(CPU, JobControl(), tmp_path / "node-0" / "negatives.json")
        training = asyncio.create_task(
            asyncio.to_thread(
                fit_distributed,
                task,
                build,
                model_dir,
                hp,
                CPU,
                control,
                tmp_path / "node-0",
                checkpoint_interval_s=1e9,
                multi_node=multi_node,
            )
        )
        announced: dict[str, Any] | None = None
        while not training.done():  # the worker's heartbeat, more often
            progress = control.progress
            announced = announced or progress.get("distributed")
            async with sessionmaker() as beat:
                await beat.execute(
                    update(TrainingJob).where(TrainingJob.id == job_id).values(progress=progress)
                )
                await beat.commit()
            await asyncio.sleep(0.2)
        result: TrainResult | BaseException
        try:
            result = await training
        except Exception as exc:
            result = exc
        out, _ = await asyncio.wait_for(node_1.communicate(), timeout=60)
    finally:
        if node_1.returncode is None:
            node_1.kill()
            await node_1.wait()
    return TwoNodes(control, result, announced, node_1.returncode, out.decode(errors="replace"))


async def test_two_nodes_train_as_one_process_on_the_same_global_batch(
    tiny: str,
    tmp_path: Path,
    settings: Settings,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    build = _build(shop())
    hp = Hyperparameters(max_steps=6, batch_size=16, max_length=32, learning_rate=1e-3, mixed_precision=False)
    _, one_result, one_curve = _one_process(build, tiny, hp, tmp_path / "one")

    two = Hyperparameters.model_validate({**hp.model_dump(), "nodes": 2})
    run = await _two_nodes(build, tiny, two, tmp_path, settings, session, sessionmaker)

    assert run.node_1_code == 0, run.node_1_output
    assert "joining job as node 1 of 2" in run.node_1_output
    assert "finished its training" in run.node_1_output
    assert isinstance(run.result, TrainResult), run.result
    assert (run.result.steps, run.result.processes) == (6, 2)
    _close(run.control.progress["loss_curve"], one_curve)
    assert run.result.final_loss == pytest.approx(one_result.final_loss, abs=LOSS_TOLERANCE)
    assert run.announced is not None and run.announced["attempt"] == 1 and run.announced["nodes"] == 2
    assert run.control.progress["distributed"] is None  # the run is over: nothing left to join
    assert not (tmp_path / "store" / run.announced["payload"]["key"]).exists()  # it goes with the run
    assert list((tmp_path / "node-1").glob("train-node/*")) == []  # node 1's work folder went


async def test_a_node_that_fails_fails_the_run(
    tiny: str,
    tmp_path: Path,
    settings: Settings,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Process 1, node 1's, cannot build its task: torchrun fails there, then on node 0, and so the run."""
    hp = Hyperparameters(max_steps=5, batch_size=16, max_length=32, nodes=2)
    run = await _two_nodes(fails_in_process_1, tiny, hp, tmp_path, settings, session, sessionmaker)

    assert isinstance(run.result, DistributedTrainingFailed), run.result
    assert run.node_1_code == 1, run.node_1_output
    assert "process 1 cannot build its task" in run.node_1_output  # node 1 logs its process's error
    assert run.control.progress["distributed"] is None


async def test_a_node_does_not_join_a_job_that_has_its_nodes(
    tmp_path: Path, settings: Settings, session: AsyncSession
) -> None:
    hp = Hyperparameters(batch_size=16, nodes=2)
    announcement = {
        "nodes": 2,
        "processes": 1,
        "master_addr": "127.0.0.1",
        "master_port": free_port(),
        "payload": {"key": "jobs/x/distributed/payload-0.pkl", "sha256": "0" * 64},
        "attempt": 1,
    }
    job_id = await _running_job(session, hp, "m", progress={"distributed": announcement})
    redis = Redis.from_url(settings.resolved_redis_url())
    key = f"recforge:node-rank:{job_id}:1"
    try:
        await redis.set(key, 1)  # node 1 has joined already
        env = _node_env(settings, tmp_path / "store", tmp_path / "node")
        done = await asyncio.to_thread(recforge, "train-node", "--job", str(job_id), "--once", env=env)
        assert done.returncode == 0, done.stderr
        assert "has all its nodes: not joining" in done.stdout + done.stderr
        assert int(await redis.get(key) or 0) == 2
        assert await redis.ttl(key) > 0
    finally:
        await redis.aclose()

    missing = await asyncio.to_thread(recforge, "train-node", "--job", str(uuid.uuid4()), "--once", env=env)
    assert missing.returncode == 1
    assert "there is no training job" in missing.stdout + missing.stderr


def test_the_global_batch_is_shared_by_every_node() -> None:
    from pydantic import ValidationError

    assert Hyperparameters(batch_size=32, processes=2, nodes=2).nodes == 2
    with pytest.raises(ValidationError, match=r"batch_size \(30\) is the global batch.*multiple of 4"):
        Hyperparameters(batch_size=30, processes=2, nodes=2)


def test_a_job_on_several_nodes_hosts_its_rendezvous_where_the_settings_say(settings: Settings) -> None:
    job_id = uuid.uuid4()
    assert multi_node(settings, job_id, 1, "m", Hyperparameters(batch_size=16)) is None
    mine = settings.model_copy(update={"rdzv_host": "10.0.0.7", "rdzv_port": 29500})
    found = multi_node(mine, job_id, 3, "m", Hyperparameters(batch_size=16, nodes=4))
    assert found is not None
    assert (found.nodes, found.master_addr, found.master_port, found.attempt) == (4, "10.0.0.7", 29500, 3)
    assert found.store.url == mine.storage_location and not found.resumed
