"""Redis, then PostgreSQL, stopped and started again under a running stack: nothing is lost or done
twice, requests during the outage answer 503 with Retry-After (never 500), and every process recovers
by itself."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import Stack, new_project, wait_for
from tests.support.world import bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT = "outages"


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> str:
    return new_project(stack, PROJECT)


def _fine_tune(stack: Stack, tiny: Path, dataset: str, steps: int) -> dict[str, Any]:
    return stack.fine_tune(PROJECT, tiny, dataset, steps)


def _trained(stack: Stack, tiny: Path, dataset: str) -> str:
    done = stack.wait_job(_fine_tune(stack, tiny, dataset, steps=10)["id"])
    assert done["status"] == "succeeded", done["error"]
    return str(done["model_version_ids"][0])


def _served_version(stack: Stack, key: str) -> str | None:
    answer = stack.inference("POST", "/recommend", key, json={"project": PROJECT, "query": "drill"})
    return answer.json()["model_version"] if answer.status_code == 200 else None


class EventSender(threading.Thread):
    """Posts one event per request, as a storefront would, counting what each answer was; an answer
    that is not 202 is retried after its Retry-After, as the API's clients are told to."""

    def __init__(self, stack: Stack, key: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{stack.inference_url}/events"
        self.headers = bearer(key)
        self.statuses: Counter[int] = Counter()
        self.accepted = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self.halt.is_set():
                body = {
                    "project": PROJECT,
                    "events": [{"type": "click", "product_id": f"p{n % 60}", "user_id": f"u{n}"}],
                }
                try:
                    answer = client.post(self.url, json=body, headers=self.headers)
                except httpx.TransportError:
                    self.statuses[0] += 1
                    time.sleep(0.2)
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code == 202 or answer.status_code == 200:
                    self.accepted += answer.json()["accepted"]
                    n += 1
                    time.sleep(0.02)
                else:
                    time.sleep(float(answer.headers.get("Retry-After", "1")))

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def _events_stored(stack: Stack) -> int:
    return int(
        stack.sql(
            "SELECT count(*) AS n FROM events WHERE project_id = (SELECT id FROM projects WHERE slug = $1)",
            PROJECT,
        )[0]["n"]
    )


def test_a_redis_restart_loses_no_job_event_or_promotion(stack: Stack, tiny: Path, dataset: str) -> None:
    first, second = _trained(stack, tiny, dataset), _trained(stack, tiny, dataset)
    stack.api("POST", f"/model-versions/{first}/promote", expect=200, json={})
    key = stack.service_key(PROJECT)
    wait_for("the first version to serve", lambda: _served_version(stack, key) == first)
    sender = EventSender(stack, key)
    sender.start()

    # long enough to still be training when the outage ends on a fast CPU (400 steps took 6 s on one)
    running = _fine_tune(stack, tiny, dataset, steps=2000)
    queued = [_fine_tune(stack, tiny, dataset, steps=20) for _ in range(2)]
    wait_for("a job to run", lambda: stack.job(running["id"])["status"] == "running")
    with stack.outage("redis"):
        time.sleep(1)
        during = _fine_tune(stack, tiny, dataset, steps=20)  # committed; its queue entry is made up for later
        stack.api("POST", f"/model-versions/{second}/promote", expect=200, json={})
        assert _served_version(stack, key) in (first, second)  # serving goes on without Redis
        time.sleep(3)
    assert stack.job(running["id"])["status"] == "running"  # the run went on through the outage

    wait_for("the promotion to reach inference", lambda: _served_version(stack, key) == second, timeout=30)
    for job in (running, *queued, during):
        done = stack.wait_job(job["id"], timeout=240)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 1, f"job {job['id']} ran {done['attempts']} times"
        assert len(done["model_version_ids"]) == 1
    versions = stack.sql(
        "SELECT training_job_id, count(*) AS n FROM model_versions WHERE training_job_id = ANY($1::uuid[]) GROUP BY 1",
        [j["id"] for j in (running, *queued, during)],
    )
    assert sorted(int(v["n"]) for v in versions) == [1, 1, 1, 1]

    time.sleep(1)
    sender.stop()
    assert sender.accepted > 0 and _events_stored(stack) == sender.accepted
    assert not [s for s in sender.statuses if s >= 500], sender.statuses
    assert "Redis is unreachable" in stack.log("trainer")
    assert stack.leftovers() == []


def test_a_postgres_restart_answers_503_and_every_service_recovers(
    stack: Stack, tiny: Path, dataset: str
) -> None:
    version = _trained(stack, tiny, dataset)
    stack.api("POST", f"/model-versions/{version}/promote", expect=200, json={})
    key = stack.service_key(PROJECT)
    wait_for("the version to serve", lambda: _served_version(stack, key) == version)
    job = _fine_tune(stack, tiny, dataset, steps=600)
    wait_for("the job to run", lambda: stack.job(job["id"])["status"] == "running")
    sender = EventSender(stack, key)
    sender.start()

    answers: Counter[tuple[str, int]] = Counter()
    retry_after: set[str] = set()
    with stack.outage("postgres"):
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for name, call in (
                ("api", lambda: stack.api("GET", f"/projects/{PROJECT}")),
                ("api-write", lambda: stack.api("POST", "/projects", json={"slug": "during", "name": "x"})),
                (
                    "recommend",
                    lambda: stack.inference(
                        "POST", "/recommend", key, json={"project": PROJECT, "query": "saw"}
                    ),
                ),
                (
                    "events",
                    lambda: stack.inference(
                        "POST",
                        "/events",
                        key,
                        json={"project": PROJECT, "events": [{"type": "impression", "product_id": "p1"}]},
                    ),
                ),
            ):
                answer = call()
                answers[(name, answer.status_code)] += 1
                if answer.status_code == 503:
                    retry_after.add(answer.headers.get("Retry-After", ""))
            time.sleep(0.2)
    assert not [a for a in answers if a[1] >= 500 and a[1] != 503], answers
    assert answers[("api", 503)] > 0 and answers[("api-write", 503)] > 0 and answers[("events", 503)] > 0, (
        answers
    )
    assert "" not in retry_after
    # recommendations are answered from memory, with keys checked a while ago
    assert answers[("recommend", 200)] > 0, answers

    wait_for(
        "the api to answer again",
        lambda: stack.api("GET", f"/projects/{PROJECT}").status_code == 200,
        timeout=30,
    )
    created = stack.api("POST", "/projects", json={"slug": "after-outage", "name": "after"})
    assert created.status_code == 201, created.text
    done = stack.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert len(done["model_version_ids"]) == 1
    assert _served_version(stack, key) == version
    answer = stack.inference(
        "POST",
        "/events",
        key,
        json={"project": PROJECT, "events": [{"type": "impression", "product_id": "p2"}]},
    )
    assert answer.status_code == 202, answer.text
    for name in ("api", "inference", "trainer"):
        assert wait_for(
            f"{name} ready",
            lambda n=name: (
                httpx.get(f"http://127.0.0.1:{stack.ports[n]}/readyz", timeout=5).status_code == 200
            ),
        )
    after = _fine_tune(stack, tiny, dataset, steps=10)
    assert stack.wait_job(after["id"])["status"] == "succeeded"
    sender.stop()
    assert _events_stored(stack) >= sender.accepted
    assert not [s for s in sender.statuses if s >= 500 and s != 503], sender.statuses
    assert stack.leftovers() == []
