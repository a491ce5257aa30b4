"""The janitor removes what killed runs left, and nothing a row still names or a live run is writing."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.janitor import sweep
from services.trainer.store import JobStore
from shared.config import Settings
from shared.models import ModelVersion, TrainingJob
from tests.factories import create_project, create_user


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
