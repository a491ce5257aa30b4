"""Where a model version's files live: `DATA_DIR/artifacts/<project>/<version>/`.

Registry rows store each file's path relative to DATA_DIR, so any machine that mounts the data
directory finds it; code that writes or reads the files works relative to the version's folder."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

Entries = dict[str, dict[str, Any]]


def version_folder(project_id: uuid.UUID, version_id: uuid.UUID) -> Path:
    """The version's folder, relative to DATA_DIR."""
    return Path("artifacts") / str(project_id) / str(version_id)


def rooted(entries: Entries, folder: Path) -> Entries:
    """File entries with paths relative to the version folder -> relative to DATA_DIR."""
    return {name: {**entry, "path": str(folder / entry["path"])} for name, entry in entries.items()}


def unrooted(entries: dict[str, Any], folder: Path) -> Entries:
    """File entries with paths relative to DATA_DIR -> relative to the version folder; entries that
    are not files (no "path") are left out."""
    prefix = f"{folder}/"
    return {
        name: {**entry, "path": entry["path"].removeprefix(prefix)}
        for name, entry in entries.items()
        if isinstance(entry, dict) and "path" in entry
    }
