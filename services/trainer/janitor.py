"""What a killed run leaves on disk goes: the janitor sweeps at the worker's start and after every job.

A run killed with SIGKILL cannot clean up after itself: its new version's folder (never registered),
an export's half-written graphs and temporary folders, an index job's staging folder, the temporary
files of atomic writes, the work folders of jobs that have ended. The janitor removes what no row names
(a registered version, the planned output of a queued or running job, a job that may still resume),
and only what is older than its look at the database, so nothing another worker is writing right now is
touched."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from services.trainer.store import JobStore, LiveOutputs
from shared.artifacts import version_folder
from shared.config import Settings
from shared.projects import as_id
from shared.storage import ObjectStore, key_id, object_store

log = logging.getLogger("recforge.trainer")

MARGIN_S = 5.0  # a file this much older than the database was read is not being written by a live run
TEMPORARY_S = 600.0  # an atomic write's temporary file older than this was abandoned


@dataclass
class Swept:
    removed: list[str] = field(default_factory=list)

    def take(self, path: Path, settings: Settings) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        self.removed.append(settings.shown(path))


def _children(folder: Path) -> Iterator[Path]:
    try:
        yield from sorted(folder.iterdir())
    except FileNotFoundError:
        return


def _older_than(path: Path, moment: float) -> bool:
    try:
        return path.lstat().st_mtime < moment
    except FileNotFoundError:
        return False


async def sweep(settings: Settings, store: JobStore) -> list[str]:
    """Remove what killed runs left; the paths removed, relative to the data directory."""
    moment = time.time() - MARGIN_S
    live = await store.live_outputs()
    swept = Swept()
    for work in _children(settings.jobs_dir):  # jobs that may still resume keep their checkpoints
        job_id = as_id(work.name)
        if job_id is not None and job_id not in live.jobs and _older_than(work, moment):
            swept.take(work, settings)
    for project in _children(settings.artifacts_dir):
        for folder in _children(project):
            version_id = as_id(folder.name)
            if version_id is None or version_id in live.planned:  # a queued or running fine-tune's
                continue
            files = live.versions.get(version_id)
            if files is None:  # no version was registered for it: a killed fine-tune's output
                if _older_than(folder, moment):
                    swept.take(folder, settings)
                continue
            if version_id in live.busy:  # an export or index job works in it now
                continue
            relative = version_folder(_owner(project), version_id)
            for entry in _children(folder):
                name = entry.name
                stale = name.startswith(".rebuild-") or (
                    name.startswith("model") and name.endswith(".onnx") and str(relative / name) not in files
                )
                if stale and _older_than(entry, moment):
                    swept.take(entry, settings)
            for entry in _children(folder / "catalog"):
                if entry.name.startswith(".") and _older_than(entry, moment):  # an index job's staging
                    swept.take(entry, settings)
    objects = object_store(settings)
    if not objects.is_local:
        await anyio.to_thread.run_sync(objects.trim, settings.cache_max_bytes)
        for key in await anyio.to_thread.run_sync(_unclaimed_objects, objects, live, moment):
            await anyio.to_thread.run_sync(objects.delete, key)
            swept.removed.append(f"{objects.url}/{key}")
    abandoned = time.time() - TEMPORARY_S
    for root in (settings.jobs_dir, settings.cache_dir):
        for temporary in root.rglob(".*.tmp") if root.exists() else ():
            if _older_than(temporary, abandoned):
                swept.take(temporary, settings)
    if swept.removed:
        log.info(
            "removed what killed runs left",
            extra={"removed": swept.removed[:50], "count": len(swept.removed)},
        )
    return swept.removed


def _unclaimed_objects(store: ObjectStore, live: LiveOutputs, moment: float) -> list[str]:
    """A bucket's objects no row names: a version folder's that was never registered (a run killed while
    it uploaded), checkpoints of jobs that cannot resume; only objects stored before ``moment``."""
    found = []
    for key, stored_at in store.modified("artifacts").items():
        version_id = key_id(key, 2)  # artifacts/<project>/<version>/...
        if version_id is None or version_id in live.planned or stored_at >= moment:
            continue
        files = live.versions.get(version_id)
        if files is None or (version_id not in live.busy and key not in files):
            found.append(key)
    for key, stored_at in store.modified("jobs").items():
        job_id = key_id(key, 1)  # jobs/<job>/...
        if job_id is not None and job_id not in live.jobs and stored_at < moment:
            found.append(key)
    return found


def _owner(project: Path) -> uuid.UUID:
    return as_id(project.name) or uuid.UUID(int=0)
