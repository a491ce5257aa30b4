"""Where a model version's files live: the object store's `artifacts/<project>/<version>/`.

Registry rows store each file's key (its path relative to the store's root, which is also its path in
each machine's workspace: see shared.storage) with its sha256; code that writes or reads the files
works relative to the version's folder."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

Entries = dict[str, dict[str, Any]]


def version_folder(project_id: uuid.UUID, version_id: uuid.UUID) -> Path:
    """The version's folder, relative to the store's root."""
    return Path("artifacts") / str(project_id) / str(version_id)


def cpu_graph(artifacts: dict[str, Any]) -> str:
    """The artifact a CPU serves a version from: its int8 graph when the int8 check passed, else fp32."""
    int8 = artifacts.get("model_int8")
    return "model_int8" if int8 and int8.get("servable") else "model"


# A query-tower-only bi-encoder's product side: `product_<graph>` artifacts (the base model's graphs)
# in this folder of the version's, beside its query graphs.
PRODUCT_FOLDER = "product"


def product_graph(artifacts: dict[str, Any], model_file: str) -> str:
    """The artifact that embeds a bi-encoder's products when ``model_file`` embeds its queries: the
    same graph, or for a query-tower-only version its product graph of that precision (the fp32 one
    where that precision has none)."""
    if f"product_{model_file}" in artifacts:
        return f"product_{model_file}"
    return "product_model" if "product_model" in artifacts else model_file


def rooted(entries: Entries, folder: Path) -> Entries:
    """File entries with paths relative to the version folder -> relative to the store's root."""
    return {name: {**entry, "path": str(folder / entry["path"])} for name, entry in entries.items()}


def unrooted(entries: dict[str, Any], folder: Path) -> Entries:
    """File entries with paths relative to the store's root -> relative to the version folder; entries that
    are not files (no "path") are left out."""
    prefix = f"{folder}/"
    return {
        name: {**entry, "path": entry["path"].removeprefix(prefix)}
        for name, entry in entries.items()
        if isinstance(entry, dict) and "path" in entry
    }


def stored_files(artifacts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry a version's artifacts name (with their store keys), the catalog index's too."""
    found: list[dict[str, Any]] = []
    for entry in artifacts.values():
        if not isinstance(entry, dict):
            continue
        if "path" in entry:
            found.append(entry)
        found.extend(stored_files(entry.get("files") or {}))
    return found
