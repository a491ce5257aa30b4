"""Deployment files and service boundaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_validate(project_root: Path, files: list[str]) -> None:
    args = [arg for f in files for arg in ("-f", f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECFORGE_")}
    result = subprocess.run(
        ["docker-compose", *args, "config", "-q"], cwd=project_root, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr


def test_inference_service_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from services.inference.app import create_app\n"
        "from shared.config import Settings\n"
        "create_app(Settings(database_url='postgresql://u@h/db', redis_url='redis://h'))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_api_and_inference_images_have_no_torch(project_root: Path) -> None:
    for name in ("Dockerfile.api", "Dockerfile.inference"):
        text = (project_root / "deploy" / "docker" / name).read_text()
        assert "[trainer]" not in text and "torch==" not in text
