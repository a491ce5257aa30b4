"""What made a model version: the libraries' versions and the code's commit."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """A remote URL as it may be shown: https://user:token@host/x -> https://host/x."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def git_state() -> dict[str, Any]:
    """The code that runs: commit, branch, remote URL (credentials removed) and whether the working tree
    had uncommitted changes to tracked files. RECFORGE_GIT_COMMIT, _BRANCH, _REMOTE and _DIRTY (true or
    false) stand in where there is no checkout (an image built from one)."""
    env = os.environ
    commit = env.get("RECFORGE_GIT_COMMIT") or _git("rev-parse", "HEAD") or None
    branch = env.get("RECFORGE_GIT_BRANCH") or _git("rev-parse", "--abbrev-ref", "HEAD") or None
    remote = env.get("RECFORGE_GIT_REMOTE") or _git("config", "--get", "remote.origin.url") or None
    if "RECFORGE_GIT_DIRTY" in env:
        dirty: bool | None = env["RECFORGE_GIT_DIRTY"].strip().lower() in ("1", "true", "yes")
    else:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {
        "commit": commit,
        "branch": None if branch == "HEAD" else branch,  # a detached checkout has no branch
        "remote": _without_credentials(remote) if remote else None,
        "dirty": dirty,
    }
