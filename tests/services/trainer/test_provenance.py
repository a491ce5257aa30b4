"""What a model version records of the code that trained it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.trainer.provenance import git_state

ROOT = Path(__file__).resolve().parents[3]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_the_checkout_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMMIT", "BRANCH", "REMOTE", "DIRTY"):
        monkeypatch.delenv(f"RECFORGE_GIT_{name}", raising=False)
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    state = git_state()
    assert state["commit"] == _git("rev-parse", "HEAD")
    assert state["dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))


def test_an_image_without_a_checkout_says_it_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFORGE_GIT_COMMIT", "abc123")
    monkeypatch.setenv("RECFORGE_GIT_BRANCH", "release/2026-12")
    monkeypatch.setenv("RECFORGE_GIT_REMOTE", "https://ci-bot:ghp_secret@github.com/shop/recforge.git")
    monkeypatch.setenv("RECFORGE_GIT_DIRTY", "false")
    assert git_state() == {
        "commit": "abc123",
        "branch": "release/2026-12",
        "remote": "https://github.com/shop/recforge.git",  # never the token
        "dirty": False,
    }
    monkeypatch.setenv("RECFORGE_GIT_DIRTY", "true")
    monkeypatch.setenv("RECFORGE_GIT_REMOTE", "git@github.com:shop/recforge.git")
    state = git_state()
    assert state["dirty"] is True and state["remote"] == "git@github.com:shop/recforge.git"
