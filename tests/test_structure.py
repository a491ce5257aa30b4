"""`make check-structure` (lint-imports with the contracts in pyproject.toml): it passes on this tree, and
fails on a tree that breaks any of its rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The smallest tree with every package the contracts name; each case adds the imports that break a rule.
SKELETON = {
    "shared/__init__.py": "",
    "shared/config.py": "import json\n",
    "services/__init__.py": "",
    "services/api/__init__.py": "",
    "services/api/app.py": "from shared import config\n",
    "services/trainer/__init__.py": "",
    "services/trainer/train.py": "import torch\nimport transformers\nimport optimum\n",
    "services/inference/__init__.py": "",
    "services/inference/app.py": "import onnxruntime\n",
    "services/cli/__init__.py": "",
    "services/cli/main.py": "import services.api.app\nimport services.trainer.train\nimport services.inference.app\n",
}
BROKEN = [  # (case, the contract that breaks, the files that break it)
    ("shared-imports-a-service", "shared/ is library code", {"shared/util.py": "from services.api import app\n"}),
    ("inference-imports-torch", "inference imports no torch", {"services/inference/model.py": "import torch\n"}),
    ("inference-imports-the-trainer", "inference imports no torch",
     {"services/inference/model.py": "from services.trainer import train\n"}),
    ("inference-imports-the-api", "inference imports no torch",
     {"services/inference/model.py": "import services.api.app\n"}),
    ("api-imports-the-trainer", "the api imports neither", {"services/api/jobs.py": "from services.trainer import train\n"}),
    ("trainer-imports-the-api", "the trainer imports neither", {"services/trainer/jobs.py": "import services.api.app\n"}),
    ("two-modules-import-each-other", "no import circles", {
        "services/api/deps.py": "from services.api import service\n",
        "services/api/service.py": "from services.api.deps import thing\n",
    }),
    ("a-circle-of-three", "no import circles", {
        "shared/a.py": "import shared.b\n",
        "shared/b.py": "import shared.c\n",
        "shared/c.py": "from shared import a\n",
    }),
]  # fmt: skip


def _lint(root: Path, project_root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).parent / "lint-imports"
    # PYTHONPATH: for the contract type in tests.structure; COLUMNS: one contract a line
    env = {**os.environ, "PYTHONPATH": str(project_root), "COLUMNS": "200"}
    return subprocess.run(
        [str(lint), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree(tmp_path: Path, project_root: Path, files: dict[str, str]) -> Path:
    """The skeleton plus ``files``, with the project's own import-linter configuration."""
    for name, text in {**SKELETON, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy(project_root / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_project_keeps_every_contract(project_root: Path) -> None:
    result = _lint(project_root, project_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_the_skeleton_keeps_every_contract(tmp_path: Path, project_root: Path) -> None:
    result = _lint(_tree(tmp_path, project_root, {}), project_root)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("case", "contract", "files"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_breaking_a_rule_fails(
    case: str, contract: str, files: dict[str, str], tmp_path: Path, project_root: Path
) -> None:
    result = _lint(_tree(tmp_path, project_root, files), project_root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout
