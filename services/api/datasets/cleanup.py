"""What a killed import left on disk goes when an api process starts: staged uploads, half-written
dataset folders and written folders whose version was never committed. Other api processes may be
importing right now, so only what is older than an hour goes (an upload or a write takes minutes)."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import anyio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.models import DatasetVersion
from shared.projects import as_id
from shared.storage import ObjectStore, key_id, object_store

log = logging.getLogger("recforge.datasets")

ABANDONED_S = 3600.0


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except FileNotFoundError:
        return []


async def sweep_imports(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    """Remove abandoned import files; the paths removed, relative to the data directory."""
    before = time.time() - ABANDONED_S
    async with sessionmaker() as session:
        known = set((await session.execute(select(DatasetVersion.id))).scalars())
    removed: list[Path] = []
    candidates = list(_children(settings.uploads_dir))
    for project in _children(settings.datasets_dir):
        for folder in _children(project):
            version_id = as_id(folder.name)
            if folder.name.startswith(".staging-") or (version_id is not None and version_id not in known):
                candidates.append(folder)
    for path in candidates:
        try:
            if path.lstat().st_mtime >= before:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    store = object_store(settings)
    if not store.is_local:  # a bucket: what an import killed between its upload and its commit stored
        orphans = await anyio.to_thread.run_sync(_orphans, store, known, before)
        for key in orphans:
            await anyio.to_thread.run_sync(store.delete, key)
        removed.extend(store.local(key) for key in orphans)
    if removed:
        log.info("removed what killed imports left", extra={"count": len(removed)})
    return [settings.shown(p) for p in removed]


def _orphans(store: ObjectStore, known: set[uuid.UUID], before: float) -> list[str]:
    found = []
    for key, stored_at in store.modified("datasets").items():
        version_id = key_id(key, 2)  # datasets/<project>/<version>/<table>.parquet
        if version_id is not None and version_id not in known and stored_at < before:
            found.append(key)
    return found
