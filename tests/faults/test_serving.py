"""Serving under load, from a load generator in a process of its own (bench/loadgen.py): versions
swapped under steady traffic fail no request and every answer names a version deployed at the time;
twice the servable load is shed with 429 while the answered requests keep their latency and the
service its memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.stack import Stack, new_project, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT = "serving"
LOADGEN = Path(__file__).resolve().parents[2] / "bench" / "loadgen.py"
QUERIES = ["acme drill", "bolt hammer", "crest hose", "delta lamp", "ember saw", "forge paint", "ladder"]
PROPAGATION_S = 3.0  # a promotion reaches inference by its notice at once, or by the 2 s re-read


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> str:
    return new_project(stack, PROJECT, products=90, queries=120)


@pytest.fixture(scope="module")
def key(stack: Stack, dataset: str) -> str:
    return stack.service_key(PROJECT)


def _version(stack: Stack, dataset: str, **job: Any) -> str:
    done = stack.wait_job(
        stack.submit(PROJECT, job_type="bi_encoder", dataset_version_id=dataset, **job)["id"], 600
    )
    assert done["status"] == "succeeded", done["error"]
    return str(done["model_version_ids"][0])


def _served(stack: Stack, key: str) -> str | None:
    answer = stack.inference("POST", "/recommend", key, json={"project": PROJECT, "query": "drill"})
    return answer.json()["model_version"] if answer.status_code == 200 else None


def _admission(stack: Stack) -> dict[str, float]:
    """The /recommend ceiling, no-queue latency (ms) and refusals, from the service's own metrics."""
    text = stack.inference("GET", "/metrics", stack.admin).text
    found: dict[str, float] = {}
    for name, short in (
        ("recforge_inference_admission_ceiling", "ceiling"),
        ("recforge_inference_admission_no_queue_seconds", "no_queue_ms"),
        ("recforge_inference_refused_total", "refused"),
    ):
        for line in text.splitlines():
            if line.startswith(f'{name}{{route="/recommend"}}'):
                value = float(line.rsplit(" ", 1)[1])
                found[short] = round(value * 1000, 2) if short == "no_queue_ms" else value
    return found


def load(stack: Stack, key: str, tmp_path: Path, *, seconds: float, **mode: float) -> dict[str, Any]:
    """bench/loadgen.py against /recommend in a process of its own; its JSON summary (with records)."""
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps({"project": PROJECT, "query": q}) for q in QUERIES))
    out = tmp_path / f"load-{time.monotonic_ns()}.json"
    args = [f"--{name}={value}" for name, value in mode.items()]
    command = [
        sys.executable, str(LOADGEN), f"--url={stack.inference_url}/recommend", f"--key={key}",
        f"--bodies={bodies}", f"--seconds={seconds}", f"--out={out}", "--records", *args,
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=seconds + 120)
    return dict(json.loads(out.read_text()))


def test_promotions_and_a_canary_under_load_fail_no_request(
    stack: Stack, tiny: Path, dataset: str, key: str, tmp_path: Path
) -> None:
    quick = {"base_model": str(tiny), "hyperparameters": {"max_steps": 5, "max_length": 32}}
    versions = [_version(stack, dataset, **quick) for _ in range(4)]
    stack.api("POST", f"/model-versions/{versions[0]}/promote", expect=200, json={})
    wait_for("the first version to serve", lambda: _served(stack, key) == versions[0])

    # (moment the change was asked for, moment it was answered, the versions that may answer after it)
    changes: list[tuple[float, float, set[str]]] = [(0.0, time.time(), {versions[0]})]
    plan = [
        (versions[1], {}, {versions[1]}),
        (versions[2], {}, {versions[2]}),
        (versions[3], {"canary_percent": 50}, {versions[2], versions[3]}),
        (versions[0], {}, {versions[0]}),
    ]

    def promote() -> None:
        for version, body, serving in plan:
            time.sleep(2.0)
            asked = time.time()
            stack.api("POST", f"/model-versions/{version}/promote", expect=200, json=body)
            changes.append((asked, time.time(), serving))

    promoter = threading.Thread(target=promote)
    promoter.start()
    result = load(stack, key, tmp_path, seconds=10.0, concurrency=16)
    promoter.join()

    records = result["records"]
    seen_by = {v: sum(1 for r in records if r[3] == v) for v in versions}
    print(f"\nhot swap: {result['statuses']}, p99 {result.get('p99_ms')} ms, answers by version {seen_by}")
    assert len(records) >= 2000, result["statuses"]
    assert result["statuses"] == {"200": len(records)}, result["statuses"]
    seen = {version for _, _, _, version in records}
    assert seen >= {versions[1], versions[2], versions[3]}  # the load spanned every change
    for started, ended, _, version in records:
        allowed: set[str] = set()
        for i, (asked, _, serving) in enumerate(changes):
            until = changes[i + 1][1] + PROPAGATION_S if i + 1 < len(changes) else float("inf")
            if asked <= ended and until >= started:
                allowed |= serving
        assert version in allowed, (started, ended, version, changes)


def test_twice_the_servable_load_is_shed_and_the_answered_keep_their_latency(
    stack: Stack, dataset: str, key: str, tmp_path: Path
) -> None:
    minilm = _version(stack, dataset, hyperparameters={"max_steps": 0})  # MiniLM as served in production
    stack.api("POST", f"/model-versions/{minilm}/promote", expect=200, json={})
    wait_for("MiniLM to serve", lambda: _served(stack, key) == minilm)
    inference = psutil.Process(stack.pid("inference"))

    load(stack, key, tmp_path, seconds=3.0, concurrency=4)  # warm-up
    unloaded = load(stack, key, tmp_path, seconds=8.0, concurrency=1)
    servable = load(stack, key, tmp_path, seconds=8.0, concurrency=8)
    assert servable["refused_share"] < 0.05, servable["statuses"]
    rate = 2 * servable["answered_per_s"]
    memory_before = inference.memory_info().rss
    before = _admission(stack)
    overload = load(stack, key, tmp_path, seconds=20.0, rate=rate)
    memory_after = inference.memory_info().rss
    after = _admission(stack)

    figures = {
        "unloaded": {k: unloaded[k] for k in ("answered_per_s", "p50_ms", "p99_ms")},
        "servable": {k: servable[k] for k in ("answered_per_s", "p50_ms", "p99_ms")},
        "overload": {
            "offered_per_s": rate,
            **{k: overload[k] for k in ("answered_per_s", "refused_share", "p50_ms", "p99_ms", "statuses")},
            "p99_over_unloaded": round(overload["p99_ms"] / unloaded["p99_ms"], 2),
            "rss_mb": [round(memory_before / 2**20), round(memory_after / 2**20)],
        },
        "admission": {"before": before, "after": after},
    }
    print("\noverload figures:", json.dumps(figures, indent=2))
    assert set(overload["statuses"]) <= {"200", "429"}, overload["statuses"]
    assert overload["refused_share"] > 0.2 and overload["refused_with_retry_after"]
    assert overload["p99_ms"] <= 3 * unloaded["p99_ms"], figures
    assert memory_after - memory_before < 64 * 2**20, figures
