"""SIGKILL of the trainer worker in the middle of a fine-tune, an evaluation and an export: the job is
taken over by the next worker and ends `succeeded` with exactly one model version, and nothing the
killed run wrote is left behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import Stack, new_project, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT = "kills"


class Workers:
    """The worker currently serving the queue: first the stack's own, then each replacement."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.pid = stack.pid("trainer")

    def kill_and_replace(self) -> None:
        self.stack.kill(self.pid)
        self.pid = self.stack.start_worker().pid


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Workers:
    return Workers(stack)


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> str:
    return new_project(stack, PROJECT, products=600, queries=240)


@pytest.fixture(scope="module")
def minilm(stack: Stack, dataset: str) -> str:
    """A version of the real MiniLM as it is (no training steps): long enough to evaluate and export
    that a kill lands in the middle."""
    job = stack.submit(
        PROJECT, job_type="bi_encoder", dataset_version_id=dataset, hyperparameters={"max_steps": 0}
    )
    done = stack.wait_job(job["id"], timeout=400)
    assert done["status"] == "succeeded", done["error"]
    return str(done["model_version_ids"][0])


def _running(stack: Stack, job_id: str) -> bool:
    rows = stack.sql("SELECT status FROM training_jobs WHERE id = $1::uuid", job_id)
    return bool(rows) and rows[0]["status"] == "running"


def _versions_of(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return stack.sql("SELECT id, artifacts FROM model_versions WHERE training_job_id = $1::uuid", job_id)


def _graphs(version: dict[str, Any]) -> set[str]:
    return {
        str(entry["path"])
        for entry in version["artifacts"].values()
        if isinstance(entry, dict) and str(entry.get("path", "")).endswith(".onnx")
    }


def _fine_tune(stack: Stack, tiny: Path, dataset: str, steps: int) -> dict[str, Any]:
    return stack.fine_tune(PROJECT, tiny, dataset, steps, hard_negatives=0)


def test_a_fine_tune_killed_after_a_checkpoint_resumes_and_registers_one_version(
    stack: Stack, workers: Workers, tiny: Path, dataset: str
) -> None:
    job = _fine_tune(stack, tiny, dataset, steps=800)
    checkpoint = stack.data_dir / "jobs" / job["id"] / "checkpoint" / "state.pt"
    wait_for("the first checkpoint", checkpoint.exists, timeout=120, every=0.1)
    workers.kill_and_replace()

    done = stack.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    versions = _versions_of(stack, job["id"])
    assert [str(v["id"]) for v in versions] == done["model_version_ids"]
    assert len(versions) == 1
    compute = stack.api("GET", f"/model-versions/{versions[0]['id']}", expect=200).json()["compute"]
    assert 0 < compute["resumed_from_step"] < 800  # from the checkpoint, not from the start
    assert stack.leftovers() == []


def _kill_while_running(stack: Stack, workers: Workers, job_id: str) -> None:
    wait_for("the job to start", lambda: _running(stack, job_id), timeout=120, every=0.02)
    # into the work itself, past the claim: a moment, since an evaluation whose baselines are cached
    # ends in about half a second
    time.sleep(0.1)
    workers.kill_and_replace()


def test_an_evaluation_killed_midway_is_run_again_to_the_end(
    stack: Stack, workers: Workers, minilm: str, dataset: str
) -> None:
    job = stack.submit(
        PROJECT, job_type="evaluate", input_model_version_id=minilm, dataset_version_id=dataset
    )
    _kill_while_running(stack, workers, job["id"])

    done = stack.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert done["result"]["metrics"]["ndcg@10"] >= 0
    assert _versions_of(stack, job["id"]) == []
    assert stack.leftovers() == []


def test_an_export_killed_midway_leaves_the_served_graphs_and_ends_with_one_set(
    stack: Stack, workers: Workers, minilm: str
) -> None:
    version_id = minilm
    before = stack.api("GET", f"/model-versions/{version_id}", expect=200).json()
    served = _graphs(before)
    folder = (stack.data_dir / next(iter(served))).parent
    present = {p.name for p in folder.iterdir()}
    job = stack.submit(PROJECT, job_type="export", input_model_version_id=version_id)
    # killed once the new graphs are being written beside the served ones
    wait_for(
        "the export to write", lambda: {p.name for p in folder.iterdir()} - present, timeout=120, every=0.05
    )
    workers.kill_and_replace()
    on_disk = {str(p.relative_to(stack.data_dir)) for p in folder.glob("*.onnx")}
    assert on_disk >= served  # what inference serves was never touched

    done = stack.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    after = stack.api("GET", f"/model-versions/{version_id}", expect=200).json()
    assert after["id"] == before["id"]
    assert _versions_of(stack, job["id"]) == []
    listed = _graphs(after)
    assert listed and listed != served
    assert {str(g.relative_to(stack.data_dir)) for g in folder.glob("*.onnx")} == listed
    assert stack.leftovers() == []
