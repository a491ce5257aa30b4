"""The README's "Your own data, step by step", run line by line as written on a fresh `recforge up` stack
(embedded PostgreSQL and Redis, free ports) with a small generated catalog and judgments, and then what
a newcomer does next: cancel a job from the command line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.data import shop_data
from tests.support.processes import CLI, stack_env

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands(block_name: str = "own-data") -> list[str]:
    """The shell commands of one of the README's own-data blocks, continuation lines joined."""
    text = README.read_text()
    block = text.split(f"<!-- {block_name}:start -->", 1)[1].split(f"<!-- {block_name}:end -->", 1)[0]
    body = block.strip().removeprefix("```bash").removesuffix("```")
    commands: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not line.strip() or (line.lstrip().startswith("#") and not pending):
            continue
        pending += line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(pending.rstrip("\n"))
            pending = ""
    return commands


def test_the_readme_blocks_are_found_whole() -> None:
    commands = readme_commands()
    assert commands[0].startswith("recforge status")
    assert any(c.startswith("recforge projects create my-shop") for c in commands)
    assert commands[-1].startswith("curl ") and commands[-1].count("\\\n") == 2
    by_curl = readme_commands("own-data-curl")
    assert by_curl[0].startswith("API=") and by_curl[-1].startswith("curl ") and "/recommend" in by_curl[-1]


def _run(commands: list[str], env: dict[str, str], work: Path, last: str) -> str:
    """Run the commands in one shell, as a terminal session keeps variables; each is announced first, so
    a failure names the command that failed. Returns stdout, ending with ``echo {last}``."""
    script = ["set -euo pipefail"]
    for number, command in enumerate(commands, start=1):
        script += [f"echo '>>> {number}' >&2", command]
    script.append(f"echo; echo {last}")
    ran = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=1200)  # fmt: skip
    reached = re.findall(r">>> (\d+)", ran.stderr)
    failed = commands[int(reached[-1]) - 1] if reached else "(none)"
    assert ran.returncode == 0, f"command {failed!r} failed:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    return ran.stdout


def _recommended(stdout: str, marker: str) -> dict[str, object]:
    """The /recommend answer the block printed last, before the marker line (curl ends no answer with a
    line break, so it may share its line with the answers before it)."""
    line = stdout[: stdout.rindex(marker)].strip().splitlines()[-1]
    decoder, position, answers = json.JSONDecoder(), 0, []
    while position < len(line):
        start = line.find("{", position)
        if start < 0:
            break
        found, position = decoder.raw_decode(line, start)
        answers.append(found)
    answer: dict[str, object] = answers[-1]
    return answer


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_readme_walk_from_project_to_recommend_runs_as_written(tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path / "stack")
    env["HF_HUB_OFFLINE"] = "1"
    work = tmp_path / "work"
    work.mkdir()
    catalog, judgments = shop_data(products=300, queries=300)
    (work / "catalog.csv").write_text(catalog)
    (work / "judgments.csv").write_text(judgments)
    bin_dir = Path(CLI[0]).parent  # the commands as a user types them: `recforge` on the PATH
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    try:
        started = time.monotonic()
        out = _run(readme_commands(), env, work, "RECFORGE_API_KEY=$RECFORGE_API_KEY MODEL=$MODEL")
        print(f"the README walk took {time.monotonic() - started:.0f} s")
        found = re.search(r"RECFORGE_API_KEY=(\S+) MODEL=(\S+)", out)
        assert found, out[-2000:]
        key, model = found.groups()
        answer = _recommended(out, "RECFORGE_API_KEY=")
        items = answer["items"]
        assert isinstance(items, list) and len(items) == 5
        assert all(item["product_id"].startswith("p") for item in items)
        assert answer["model_version"] == model

        _cancel_from_the_command_line(env, work, key, ports["api"])

        # the same steps by curl, for a second project (the first one holds the slug my-shop)
        if shutil.which("jq") is None:
            pytest.skip("jq is not installed: the README's curl steps use it")
        by_curl = [c.replace("my-shop", "my-shop-by-curl") for c in readme_commands("own-data-curl")]
        started = time.monotonic()
        out = _run(by_curl, {**env, "RECFORGE_API_KEY": key}, work, "MODEL=$MODEL")
        print(f"the README's curl steps took {time.monotonic() - started:.0f} s")
        answer = _recommended(out, "MODEL=")
        assert answer["model_version"] == out.rsplit("MODEL=", 1)[1].strip()
        assert isinstance(answer["items"], list) and len(answer["items"]) == 5
    finally:
        subprocess.run([*CLI, "down"], env=env, capture_output=True, text=True, timeout=120)


def _cancel_from_the_command_line(env: dict[str, str], work: Path, key: str, api_port: int) -> None:
    env = {**env, "RECFORGE_API_KEY": key}
    api = f"http://127.0.0.1:{api_port}/api/v1"
    headers = {"Authorization": f"Bearer {key}"}
    version = httpx.get(f"{api}/projects/my-shop/datasets", headers=headers, timeout=10).json()["items"]
    relevance = next(d for d in version if d["kind"] == "relevance")["latest_version"]["id"]

    def submit() -> str:
        queued = subprocess.run(
            [*CLI, "jobs", "submit", "-p", "my-shop", "--type", "bi_encoder", "--dataset-version", relevance,
             "--set", "max_steps=100000", "--no-watch"],
            env=env, cwd=work, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        return queued.stdout.strip()

    def running(job_id: str) -> None:
        for _ in range(600):
            if (
                httpx.get(f"{api}/training-jobs/{job_id}", headers=headers, timeout=10).json()["status"]
                == "running"
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never started")

    job = submit()
    running(job)
    cancelled = subprocess.run(
        [*CLI, "jobs", "cancel", job], env=env, capture_output=True, text=True, timeout=120
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job}: cancelled"

    job = submit()
    running(job)
    asked = subprocess.run(
        [*CLI, "jobs", "cancel", job, "--timeout", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == f"job {job}: cancel requested; the job stops at its next checkpoint"
