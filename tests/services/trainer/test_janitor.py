"""The janitor removes what killed runs left, and nothing a row still names or a live run is writing."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.janitor import sweep
from services.trainer.store import JobStore
from shared.config import Settings
from shared.models import ModelVersion, TrainingJob
from shared.storage import object_store
from tests.factories import create_project, create_user
from tests.support.s3 import s3_server


def _old(path: Path, seconds: float = 3600) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_the_janitor_removes_only_what_no_row_names(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    tmp_path: Path,
) -> None:
    # a data folder of its own: the session's holds what other tests trained, gone from the database
    settings = settings.model_copy(update={"data_dir": tmp_path})
    owner = await create_user(session)
    project = await create_project(session, owner=owner)
    registered, busy_version = uuid.uuid4(), uuid.uuid4()
    prefix = f"artifacts/{project.id}"
    for version_id, number in ((registered, 1), (busy_version, 2)):
        session.add(
            ModelVersion(
                id=version_id,
                project_id=project.id,
                version=number,
                task_type="bi_encoder",
                base_model="m",
                artifacts={
                    "model": {"path": f"{prefix}/{version_id}/model.onnx"},
                    "model_int8": {"path": f"{prefix}/{version_id}/model.int8.onnx"},
                },
            )
        )
    planned = uuid.uuid4()
    running = TrainingJob(project_id=project.id, job_type="bi_encoder", status="running",
                          progress={"output_version_id": str(planned)})  # fmt: skip
    exporting = TrainingJob(project_id=project.id, job_type="export", status="running",
                            input_model_version_id=busy_version)  # fmt: skip
    ended = TrainingJob(project_id=project.id, job_type="bi_encoder", status="failed")
    session.add_all([running, exporting, ended])
    await session.commit()

    root = settings.data_dir
    artifacts = root / prefix
    kept = [
        _old(_dir(root / "jobs" / str(running.id))),
        _old(_file(artifacts / str(registered) / "model.onnx")),
        _old(_file(artifacts / str(registered) / "model.int8.onnx")),
        _old(_file(artifacts / str(registered) / "tokenizer.json")),
        _old(_dir(artifacts / str(planned))),
        _old(_file(artifacts / str(busy_version) / "model.int8.1a2b3c4d.onnx")),  # its export writes it now
        _dir(root / "jobs" / str(uuid.uuid4())),  # made a moment ago: maybe by a run starting elsewhere
        _dir(artifacts / str(uuid.uuid4())),
    ]
    removed = [
        _old(_dir(root / "jobs" / str(ended.id))),
        _old(_dir(root / "jobs" / str(uuid.uuid4()))),
        _old(_dir(artifacts / str(uuid.uuid4()))),  # a killed fine-tune's version, never registered
        _old(_file(artifacts / str(registered) / "model.int8.deadbeef.onnx")),  # a killed export's graph
        _old(_dir(artifacts / str(registered) / ".rebuild-xyz")),
        _old(_dir(artifacts / str(registered) / "catalog" / f".{uuid.uuid4()}.abcd1234")),
        _old(_file(root / "jobs" / str(running.id) / ".negatives.json.abcd1234.tmp")),
        _old(_file(root / "cache" / "baselines" / ".k.json.abcd1234.tmp")),
    ]
    swept = await sweep(settings, JobStore(sessionmaker))
    assert all(p.exists() for p in kept), [p for p in kept if not p.exists()]
    assert not any(p.exists() for p in removed), [p for p in removed if p.exists()]
    assert sorted(swept) == sorted(str(p.relative_to(root)) for p in removed)


async def test_on_a_bucket_the_janitor_removes_the_objects_no_row_names(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with s3_server() as endpoint:
        bucket = f"janitor-{uuid.uuid4().hex[:8]}"
        settings = settings.model_copy(
            update={"data_dir": tmp_path, "storage_url": f"s3://{bucket}/shop", "s3_endpoint_url": endpoint}
        )
        store = object_store(settings)
        store.fs.mkdir(bucket)
        owner = await create_user(session)
        project = await create_project(session, owner=owner)
        registered, planned = uuid.uuid4(), uuid.uuid4()
        prefix = f"artifacts/{project.id}"
        session.add(
            ModelVersion(
                id=registered, project_id=project.id, version=1, task_type="bi_encoder", base_model="m",
                artifacts={"model": {"path": f"{prefix}/{registered}/model.onnx"},
                           "catalog_index": {"files": {"embeddings": {"path": f"{prefix}/{registered}/e.npy"}}}},
            )
        )  # fmt: skip
        running = TrainingJob(project_id=project.id, job_type="bi_encoder", status="running",
                              progress={"output_version_id": str(planned)})  # fmt: skip
        ended = TrainingJob(project_id=project.id, job_type="bi_encoder", status="succeeded")
        session.add_all([running, ended])
        await session.commit()
        source = _file(tmp_path / "object", b"bytes")
        kept = [
            f"{prefix}/{registered}/model.onnx",
            f"{prefix}/{registered}/e.npy",
            f"{prefix}/{planned}/model.onnx",  # a running fine-tune uploads it now
            f"jobs/{running.id}/checkpoint.json",
        ]
        removed = [
            f"{prefix}/{uuid.uuid4()}/model.onnx",  # uploaded by a run killed before it registered
            f"{prefix}/{registered}/model.int8.deadbeef.onnx",  # a killed export's graph
            f"jobs/{ended.id}/checkpoint-0123456789abcdef.tar",
        ]
        for key in kept + removed:
            store.put(source, key, cache=False)
        monkeypatch.setattr("services.trainer.janitor.MARGIN_S", -60.0)  # every object counts as old
        swept = await sweep(settings, JobStore(sessionmaker))
        left = set(store.keys(""))
        assert set(kept) <= left and not (set(removed) & left), sorted(left)
        assert sorted(s for s in swept if s.startswith("s3://")) == sorted(
            f"{store.url}/{k}" for k in removed
        )
