"""A fine-tune's checkpoints in the object store, so a run on another machine resumes where a killed one
stopped. Where the store is the data directory itself the work folder is shared already and nothing is
copied; otherwise each checkpoint, once swapped into place in the work folder, is uploaded as one tar
(``jobs/<job>/checkpoint-<sha256[:16]>.tar``) and then named by a pointer (``jobs/<job>/checkpoint.json``
with its key and sha256), so a reader never follows the pointer to a partial or mismatched checkpoint.

The work folder carries a small marker (``.store.json``: the store's URL, no credentials) that tells
whoever writes a checkpoint there (the job's thread, or rank 0 of a distributed run in another process)
where to copy it."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.files import sha256_file, write_text_atomic
from shared.storage import ObjectStore

log = logging.getLogger("recforge.trainer")

MARKER = ".store.json"
POINTER = "checkpoint.json"


def attach(work: Path, settings: Settings, job_id: uuid.UUID) -> None:
    """Mark ``work`` as job ``job_id``'s, copied to the settings' store (unless the store is DATA_DIR)."""
    work.mkdir(parents=True, exist_ok=True)
    if settings.shares_data_dir:
        (work / MARKER).unlink(missing_ok=True)
        return
    marker = {
        "url": settings.storage_location,
        "endpoint_url": settings.s3_endpoint_url,
        "cache_dir": str(settings.cache_dir.resolve()),
        "prefix": f"jobs/{job_id}",
    }
    write_text_atomic(work / MARKER, json.dumps(marker))


def _attached(work: Path) -> tuple[ObjectStore, str] | None:
    try:
        marker: dict[str, Any] = json.loads((work / MARKER).read_text())
    except FileNotFoundError:
        return None
    store = ObjectStore(marker["url"], Path(marker["cache_dir"]), endpoint_url=marker.get("endpoint_url"))
    return store, str(marker["prefix"])


def upload(work: Path) -> None:
    """Copy ``work/checkpoint`` to the store, if ``work`` is attached to one."""
    attached = _attached(work)
    if attached is None or not (work / "checkpoint").is_dir():
        return
    store, prefix = attached
    packed = work / ".checkpoint.tar.tmp"
    try:
        with tarfile.open(packed, "w") as tar:
            tar.add(work / "checkpoint", arcname="checkpoint")
        sha256 = sha256_file(packed)
        key = f"{prefix}/checkpoint-{sha256[:16]}.tar"
        before = _pointer(store, prefix)
        store.put(packed, key, cache=False)
        pointer = work / ".checkpoint.json.tmp"
        pointer.write_text(json.dumps({"key": key, "sha256": sha256}))
        store.put(pointer, f"{prefix}/{POINTER}", cache=False)
        pointer.unlink(missing_ok=True)
        if before is not None and before["key"] != key:
            store.delete(before["key"])
        log.info("checkpoint stored", extra={"key": key, "bytes": packed.stat().st_size})
    finally:
        packed.unlink(missing_ok=True)


def _pointer(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    raw = store.read_bytes(f"{prefix}/{POINTER}")
    return json.loads(raw) if raw else None


def restore(work: Path) -> bool:
    """Fetch the stored checkpoint into ``work`` when this machine has none: True if one was fetched."""
    attached = _attached(work)
    if attached is None or (work / "checkpoint" / "state.pt").exists():
        return False
    store, prefix = attached
    pointer = _pointer(store, prefix)
    if pointer is None:
        return False
    packed = store.fetch(pointer["key"], pointer["sha256"])
    staging = work / f".restore-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(packed) as tar:
            tar.extractall(staging, filter="data")
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
        (staging / "checkpoint").rename(work / "checkpoint")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        store.forget(pointer["key"], pointer["sha256"])
    log.info("checkpoint fetched from the store", extra={"key": pointer["key"]})
    return True


def discard(work: Path) -> None:
    """The job has ended: its work folder and its stored checkpoints go."""
    attached = _attached(work)
    if attached is not None:
        store, prefix = attached
        try:
            store.delete_tree(prefix)
        except Exception:
            log.warning("could not remove a finished job's stored checkpoints", exc_info=True)
    shutil.rmtree(work, ignore_errors=True)
