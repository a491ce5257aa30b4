"""A fine-tune's checkpoints in a bucket (a real S3-protocol server): a run on another machine, with a
work folder and a cache of its own, resumes from what the killed run stored; only the newest checkpoint
is kept; an ended job's checkpoints go; on the data directory's own store nothing is copied."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.trainer import checkpoint_store
from shared.config import Settings
from shared.storage import object_store
from tests.support.s3 import s3_server


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


def _machine(root: Path, bucket: str, endpoint: str) -> Settings:
    return Settings(
        data_dir=root,
        storage_url=f"s3://{bucket}/shop",
        s3_endpoint_url=endpoint,
        local_cache_dir=root / "cache",
    )


def _checkpoint(work: Path, step: int) -> None:
    folder = work / "checkpoint"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "weights.bin").write_bytes(bytes([step]) * 4096)
    (folder / "state.pt").write_text(f"step {step}")


def test_another_machine_resumes_from_the_stored_checkpoint(endpoint: str, tmp_path: Path) -> None:
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    first, second = _machine(tmp_path / "a", bucket, endpoint), _machine(tmp_path / "b", bucket, endpoint)
    store = object_store(first)
    store.fs.mkdir(bucket)
    job_id = uuid.uuid4()
    work = first.jobs_dir / str(job_id)
    checkpoint_store.attach(work, first, job_id)
    _checkpoint(work, 1)
    checkpoint_store.upload(work)
    _checkpoint(work, 2)
    checkpoint_store.upload(work)
    stored = store.keys(f"jobs/{job_id}")
    assert len([k for k in stored if k.endswith(".tar")]) == 1 and f"jobs/{job_id}/checkpoint.json" in stored

    elsewhere = second.jobs_dir / str(job_id)  # the first machine is gone; the job runs again here
    checkpoint_store.attach(elsewhere, second, job_id)
    assert checkpoint_store.restore(elsewhere)
    assert (elsewhere / "checkpoint" / "state.pt").read_text() == "step 2"
    assert (elsewhere / "checkpoint" / "model" / "weights.bin").read_bytes() == bytes([2]) * 4096
    assert not checkpoint_store.restore(elsewhere)  # it has one now: nothing is fetched again
    assert not [p for p in (second.cache_dir / "objects").rglob("*") if p.is_file()]  # no copy kept

    checkpoint_store.discard(elsewhere)
    assert not elsewhere.exists() and store.keys(f"jobs/{job_id}") == []


def test_a_job_with_nothing_stored_starts_from_the_base_model(endpoint: str, tmp_path: Path) -> None:
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    settings = _machine(tmp_path, bucket, endpoint)
    object_store(settings).fs.mkdir(bucket)
    work = settings.jobs_dir / "fresh"
    checkpoint_store.attach(work, settings, uuid.uuid4())
    assert not checkpoint_store.restore(work)
    assert not (work / "checkpoint").exists()


def test_on_the_data_directory_checkpoints_stay_in_the_work_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.shares_data_dir
    work = settings.jobs_dir / "job"
    checkpoint_store.attach(work, settings, uuid.uuid4())
    _checkpoint(work, 3)
    checkpoint_store.upload(work)  # nothing to copy it to
    assert not (work / checkpoint_store.MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs"]
