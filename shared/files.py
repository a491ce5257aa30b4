"""File helpers shared by the services: content digests and the manifest entry of a written file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


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
