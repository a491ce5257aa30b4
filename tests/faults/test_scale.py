"""Replicas, as in a cluster, on one machine: `recforge up --api-replicas 2 --inference-replicas 2
--workers 3` on one database, Redis and object store: an S3 bucket on a real S3-protocol server (moto's,
in its own process), each process with a local cache of its own as a pod has. 30 fine-tunes are submitted across both APIs
while shoppers' /recommend requests are spread over both inference replicas; mid-way one worker (in the
middle of a job) and one inference replica are killed with SIGKILL. Every job ends `succeeded` exactly
once (one model version each, none twice), and the only failed searches are those the killed replica
had in flight or was sent before the others noticed, each of which succeeds when retried on the other."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import httpx
import pytest

from tests.support.models import tiny_bert
from tests.support.s3 import CREDENTIALS, s3_server
from tests.support.stack import Stack, new_project, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

PROJECT = "scale"
JOBS = 30
QUERIES = ["acme drill", "bolt hammer", "crest hose", "delta lamp", "ember saw", "forge paint", "ladder"]


BUCKET = "recforge-scale"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as endpoint:
        fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir(
            BUCKET
        )
        yield endpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3: str) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("scale"))
    on_s3 = {"RECFORGE_STORAGE_URL": f"s3://{BUCKET}/shop", "RECFORGE_S3_ENDPOINT_URL": s3, **CREDENTIALS}
    try:
        yield running.up("--api-replicas", "2", "--inference-replicas", "2", "--workers", "3", **on_s3)
    finally:
        running.down()


@dataclass
class Shoppers:
    """Searches spread over both inference replicas in turn; a failed one is retried on the other."""

    stack: Stack
    key: str
    ports: list[int]
    seen: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _ask(self, port: int, query: str) -> int | str:
        try:
            answer = httpx.post(
                f"http://127.0.0.1:{port}/recommend",
                json={"project": PROJECT, "query": query},
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=10,
            )
            return answer.status_code
        except httpx.TransportError as exc:
            return type(exc).__name__

    def run(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            port = self.ports[n % 2]
            query = QUERIES[n % len(QUERIES)]
            outcome = self._ask(port, query)
            record: dict[str, Any] = {"port": port, "outcome": outcome, "at": time.monotonic()}
            if outcome != 200:
                record["retried"] = self._ask(self.ports[(n + 1) % 2], query)
            self.seen.append(record)
            time.sleep(0.05)


def test_jobs_end_once_and_searches_survive_kills_across_replicas(stack: Stack, s3: str) -> None:
    dataset = new_project(stack, PROJECT, products=60, queries=120)
    stack.api("PATCH", f"/projects/{PROJECT}", expect=200, json={"max_concurrent_jobs": 8,
                                                                  "budget": {"cpu_hours": 200}})  # fmt: skip
    tiny = tiny_bert(stack.root / "tiny")
    body = {
        "job_type": "bi_encoder", "dataset_version_id": dataset, "base_model": str(tiny),
        "hyperparameters": {"epochs": 100, "max_steps": 8, "batch_size": 16, "max_length": 32},
        "compute_limit_hours": 0.25,
    }  # fmt: skip
    first = stack.wait_job(stack.submit(PROJECT, **body)["id"], timeout=300)
    assert first["status"] == "succeeded", first["error"]
    stack.api("POST", f"/model-versions/{first['model_version_ids'][0]}/promote", expect=200, json={})
    key = stack.service_key(PROJECT)
    api_ports = [stack.ports["api"], stack.ports["api"] + 10]
    inference_ports = [stack.ports["inference"], stack.ports["inference"] + 10]
    for port in inference_ports:  # both replicas serve the promoted version before the shoppers come
        wait_for(
            f"inference on :{port} to serve",
            lambda port=port: httpx.post(
                f"http://127.0.0.1:{port}/recommend", json={"project": PROJECT, "query": "drill"},
                headers={"Authorization": f"Bearer {key}"}, timeout=5,
            ).status_code == 200,
            timeout=60,
        )  # fmt: skip

    shoppers = Shoppers(stack, key, inference_ports)
    traffic = threading.Thread(target=shoppers.run, daemon=True)
    traffic.start()
    jobs = []
    for n in range(JOBS):  # across both APIs; an idempotency key makes a retried submission one job
        response = httpx.post(
            f"http://127.0.0.1:{api_ports[n % 2]}/api/v1/projects/{PROJECT}/training-jobs",
            json=body,
            headers={"Authorization": f"Bearer {stack.admin}", "Idempotency-Key": f"scale-{n}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])

    # mid-way: a worker in the middle of a job, and the second inference replica
    def a_running_job() -> dict[str, Any] | None:
        done = stack.sql("SELECT count(*) AS n FROM training_jobs WHERE status = 'succeeded'")[0]["n"]
        rows = stack.sql(
            "SELECT id::text, worker_id FROM training_jobs WHERE status = 'running' AND worker_id IS NOT NULL "
            "AND progress->>'phase' = 'train'"
        )
        return rows[0] if rows and done >= 6 else None

    victim = wait_for("a job in training after a few have ended", a_running_job, timeout=600, every=0.2)
    worker_pid = int(victim["worker_id"].rsplit(":", 1)[1])
    assert worker_pid in {stack.pid(name) for name in ("trainer", "trainer-2", "trainer-3")}
    stack.kill(worker_pid)
    killed_at = time.monotonic()
    stack.kill(stack.pid("inference-2"))

    def all_ended() -> list[dict[str, Any]] | None:
        found = [stack.job(job_id) for job_id in jobs]
        return found if all(j["status"] in ("succeeded", "failed", "cancelled") for j in found) else None

    ended = wait_for("every job to end", all_ended, timeout=900, every=2)
    shoppers.stop.set()
    traffic.join(30)

    assert [j["status"] for j in ended] == ["succeeded"] * JOBS, [j["error"] for j in ended if j["error"]]
    taken_over = stack.job(victim["id"])
    assert taken_over["attempts"] >= 2  # the killed run's job was run again by another worker
    if taken_over["progress"].get("resumed_from_step"):  # from the checkpoint the killed run stored
        assert taken_over["progress"].get("checkpoint_fetched"), taken_over["progress"]
    per_job = stack.sql(
        "SELECT training_job_id::text AS job, count(*) AS n FROM model_versions WHERE project_id = "
        "(SELECT id FROM projects WHERE slug = $1) GROUP BY training_job_id",
        PROJECT,
    )
    counts = {row["job"]: row["n"] for row in per_job}
    assert all(counts.get(job_id) == 1 for job_id in jobs), counts  # one version each, none twice
    assert sum(counts.values()) == JOBS + 1

    # every version's files and the data are in the bucket, none in the shared data directory
    bucket = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3}, skip_instance_cache=True)
    stored = [path.removeprefix(f"{BUCKET}/shop/") for path in bucket.find(f"{BUCKET}/shop")]
    artifacts = stack.sql(
        "SELECT artifacts FROM model_versions WHERE project_id = (SELECT id FROM projects WHERE slug = $1)",
        PROJECT,
    )
    keys = {entry["path"] for row in artifacts for entry in json.loads(row["artifacts"]).values()
            if isinstance(entry, dict) and "path" in entry}  # fmt: skip
    assert len(keys) > 3 * (JOBS + 1) and keys <= set(stored), sorted(keys - set(stored))[:5]
    assert any(key.startswith("datasets/") for key in stored)
    assert not (stack.data_dir / "artifacts").exists() and not (stack.data_dir / "datasets").exists()
    assert not any(key.startswith("jobs/") for key in stored)  # ended jobs' checkpoints are gone

    # searches: every failure was on the killed replica, after its kill, and its retry succeeded
    failed = [s for s in shoppers.seen if s["outcome"] != 200]
    answered = [s for s in shoppers.seen if s["outcome"] == 200]
    print(  # with -s: what the kill cost the shoppers
        f"{len(answered)} searches answered, {len(failed)} failed on the killed replica and succeeded on "
        f"the other; job {victim['id']} was taken over after its worker's kill"
    )
    assert len(answered) > 100
    assert all(s["port"] == inference_ports[1] and s["at"] >= killed_at - 1 for s in failed), failed[:5]
    assert all(s["retried"] == 200 for s in failed), failed[:5]
