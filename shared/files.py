"""File helpers shared by the services: content digests and the manifest entry of a written file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(root: Path, name: str) -> dict[str, Any]:
    """{"path": name (relative to root), "sha256", "bytes"} of root/name."""
    path = root / name
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


class DigestMismatch(Exception):
    """A file is not the one its manifest entry describes."""


def verify(root: Path, entry: dict[str, Any]) -> Path:
    """root/entry["path"], after checking it has the entry's sha256 (entries without one pass)."""
    path: Path = root / str(entry["path"])
    expected = entry.get("sha256")
    if expected is not None and sha256_file(path) != expected:
        raise DigestMismatch(f"{entry['path']} does not match its recorded sha256: it was changed or damaged")
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that it is either its old self or complete, never half-written: ``write``
    fills a temporary file beside it, which is flushed to disk and then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    data = text.encode("utf-8")

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_atomic(path, write)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the folders) to disk, before the folder is renamed into place."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))
