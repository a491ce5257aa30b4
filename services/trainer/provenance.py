"""What made a model version: the libraries' versions and the code's commit."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "recforge",
    "torch",
    "transformers",
    "tokenizers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
)


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    if os.environ.get("RECFORGE_GIT_COMMIT"):
        return os.environ["RECFORGE_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
