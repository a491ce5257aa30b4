"""The continuous-learning loop end to end, on a whole stack (`recforge up`) and the sample shop, with
simulated shoppers sending traffic all along. Production starts as the zero-shot retriever of a small
random-weight BERT (an untuned model whose canaries against MiniLM fine-tunes decide within a few hundred
requests, so the test runs in minutes); the loop fine-tunes the real MiniLM.

1. The zero-shot retriever in production; a pipeline with a cron trigger and a feedback window is saved.
   With no further call the loop collects feedback, trains, passes the gate, canaries at 50%, and the
   judge finds the candidate's CTR@10 higher at alpha 0.05 and promotes it. The run row, the audit log
   and the webhook deliveries (to a server this test runs, signatures checked) show every step.
2. A candidate trained on shuffled grades (the small BERT's) is refused at the gate with a readable
   reason, and a task for the pipeline's owner appears.
3. With approval required the run waits, a maintainer gets the task, and moving it to done continues
   the run; that candidate (the small BERT trained on shuffled grades, past a lenient gate) is worse
   with shoppers and the judge rolls it back: production serves the version of step 1.
None of the shoppers' searches failed while versions changed under them. (One tick firing once
however many controllers run is tests/services/api/test_pipelines.py, with four controllers.)"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.api.webhooks.delivery import verify
from services.cli.sample_shop import generate
from services.cli.simulator import Judgments, SimulationOptions, Traffic
from tests.support.models import tiny_bert
from tests.support.processes import free_port
from tests.support.stack import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = "loop"
SECRET = "loop-test-secret"
FAST_RATE, SLOW_RATE = 25.0, 2.0  # searches per second: during canaries, and while the trainer works


class Receiver:
    """A webhook receiver: it keeps each delivery's event, body and whether its signature verified."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signed = verify(SECRET, self.headers.get("X-RecForge-Signature", ""), body)
                outer.got.append(
                    {"event": self.headers["X-RecForge-Event"], "signed": signed, **json.loads(body)}
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, run_id: str) -> list[str]:
        return [d["event"] for d in self.got if d["data"].get("run_id") == run_id]


class Shoppers:
    """services.cli.simulator's Traffic in a thread of its own, for the whole module."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.thread = threading.Thread(target=lambda: asyncio.run(traffic.run()), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.traffic.stop()
        self.thread.join(60)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    stack = Stack(tmp_path_factory.mktemp("loop")).up(RECFORGE_PIPELINE_TICK_S="1")
    receiver = Receiver()
    shoppers: Shoppers | None = None
    try:
        tiny = str(tiny_bert(stack.root / "tiny"))
        shop = generate(products=300, queries=150, seed=5)
        queries = sorted({q for q, _, _ in shop.judgments})
        random.Random(5).shuffle(queries)
        golden = set(queries[:30])  # no shopper searches for these
        rows = [row for row in shop.judgments if row[0] not in golden]
        csv = "query,product_id,grade\n"
        searched = csv + "".join(f'"{q}",{p},{g}\n' for q, p, g in rows)
        grades = [g for _, _, g in rows]
        random.Random(6).shuffle(grades)
        shuffled = csv + "".join(f'"{q}",{p},{g}\n' for (q, p, _), g in zip(rows, grades, strict=True))
        held = csv + "".join(f'"{q}",{p},{g}\n' for q, p, g in shop.judgments if q in golden)
        stack.api("POST", "/projects", expect=201, json={"slug": PROJECT, "name": "Loop",
                                                         "budget": {"cpu_hours": 20}, "max_concurrent_jobs": 2})  # fmt: skip
        stack.api("PATCH", f"/projects/{PROJECT}", expect=200, json={"exploration_percent": 20})
        stack.upload(PROJECT, "catalog.csv", shop.catalog_csv(), "catalog")
        versions = {
            "judgments": stack.upload(PROJECT, "judgments.csv", searched, "relevance"),
            "shuffled": stack.upload(PROJECT, "shuffled.csv", shuffled, "relevance"),
            "golden": stack.upload(PROJECT, "golden.csv", held, "relevance"),
        }
        zero = stack.wait_job(
            stack.submit(PROJECT, job_type="bi_encoder", dataset_version_id=versions["judgments"],
                         base_model=tiny, hyperparameters={"max_steps": 0, "max_length": 32})["id"], 300,
        )  # fmt: skip
        assert zero["status"] == "succeeded", zero["error"]
        zero_shot = zero["model_version_ids"][0]
        stack.api("POST", f"/model-versions/{zero_shot}/promote", expect=200)
        key = stack.service_key(PROJECT)
        wait_for(
            "inference to serve the zero-shot version",
            lambda: stack.inference("POST", "/recommend", key, json={"project": PROJECT, "query": "drill"})
            .status_code == 200,
        )  # fmt: skip
        stack.api("POST", f"/projects/{PROJECT}/webhooks", expect=201, json={
            "url": f"http://127.0.0.1:{receiver.port}/hooks", "secret": SECRET,
            "events": ["run.started", "run.finished", "gate.refused", "model.promoted", "model.rolled_back",
                       "approval.requested"],
        })  # fmt: skip
        judged: Judgments = {}
        for q, p, g in rows:
            judged.setdefault(q, {})[p] = float(g)
        shoppers = Shoppers(
            Traffic(
                SimulationOptions(
                    inference_url=stack.inference_url,
                    key=key,
                    project=PROJECT,
                    judgments=judged,
                    shoppers=4,
                    rate=FAST_RATE,
                    seed=9,
                )
            )
        )
        yield {"stack": stack, "receiver": receiver, "shoppers": shoppers, "versions": versions,
               "zero_shot": zero_shot, "tiny": tiny}  # fmt: skip
    finally:
        if shoppers is not None:
            shoppers.stop()
        receiver.server.shutdown()
        stack.down()


def _run_ends(loop: dict[str, Any], pipeline: str, timeout: float, approve: bool = False) -> dict[str, Any]:
    """Follow the pipeline's run until it ends, the shoppers slowed while it trains and gates."""
    stack: Stack = loop["stack"]
    traffic: Traffic = loop["shoppers"].traffic

    def ended() -> dict[str, Any] | None:
        runs = stack.api("GET", f"/projects/{PROJECT}/pipeline-runs", expect=200,
                         params={"pipeline_id": pipeline}).json()["items"]  # fmt: skip
        going = [r for r in runs if r["status"] != "skipped"]
        if not going:
            return None
        run: dict[str, Any] = going[0]  # newest first
        traffic.rate = FAST_RATE if run["step"] in ("canary", "judge") else SLOW_RATE
        if approve and run["status"] == "awaiting_approval":
            return run
        return run if run["status"] not in ("running", "awaiting_approval", "canary", "promoting") else None

    found: dict[str, Any] = wait_for(f"a run of pipeline {pipeline} to end", ended, timeout, every=1)
    traffic.rate = FAST_RATE
    return found


def _pipeline(stack: Stack, **body: Any) -> dict[str, Any]:
    found: dict[str, Any] = stack.api("POST", f"/projects/{PROJECT}/pipelines", expect=201, json=body).json()
    return found


TRAIN = {"max_steps": 60, "batch_size": 16, "max_length": 32}
# Judged on CTR@10 at one look after 600 requests per arm. The latency guardrail waits for as many: the
# p99 of a canary's first hundred requests, answered while the trainer's gate jobs share the two cores
# and the canary's session warms up, is a few requests' worth (one run's read 16 ms against 5.6 ms), and
# this test is about the loop's decision by shoppers' clicks (the guardrail has tests of its own).
ROLLOUT = {"canary_percent": 50, "min_requests": 600, "max_looks": 1, "alpha": 0.05, "max_duration_s": 900,
           "guardrail_min_requests": 600}  # fmt: skip


def test_the_loop_learns_from_shoppers_and_promotes_on_its_own(loop: dict[str, Any]) -> None:
    stack: Stack = loop["stack"]
    traffic: Traffic = loop["shoppers"].traffic
    wait_for("3,000 searches of feedback", lambda: traffic.searches >= 3000, 600, every=1)
    tick = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    pipeline = _pipeline(
        stack,
        name="learn-from-shoppers",
        role="retriever",
        triggers={"cron": f"{tick.minute} * * * *"},
        training={"job_type": "bi_encoder", "feedback": {"days": 1, "min_impressions": 3}, "hyperparameters": TRAIN},
        gate={"golden_dataset_version_id": loop["versions"]["golden"],
              "rules": [{"metric": "catalog_ndcg@10", "max_drop": 0.02}]},
        rollout=ROLLOUT,
    )  # fmt: skip
    run = _run_ends(loop, pipeline["id"], 900)
    assert run["status"] == "promoted", (run["outcome"], run.get("judge"), run.get("gate"))
    assert run["trigger"] == "cron"
    assert [s["name"] for s in run["steps"]] == ["collect", "train", "gate", "canary", "judge", "promote"]
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    links = run["links"]
    assert {"feedback_job_id", "dataset_version_id", "training_job_id", "candidate_version_id",
            "production_version_id", "gate_job_ids", "deployment_ids"} <= set(links)  # fmt: skip
    assert links["production_version_id"] == loop["zero_shot"]
    assert run["gate"]["passed"] and run["gate"]["reason"].startswith("passed the gate: catalog_ndcg@10")
    [look] = run["judge"]["looks"]
    assert look["candidate"]["rate"] > look["primary"]["rate"] and look["p_better"] < 0.05
    assert min(look["candidate"]["requests"], look["primary"]["requests"]) >= 600
    deployed = stack.api("GET", f"/projects/{PROJECT}/deployments", expect=200).json()
    assert deployed[0]["model_version_id"] == links["candidate_version_id"]
    assert deployed[0]["canary_model_version_id"] is None
    audit = stack.api("GET", f"/projects/{PROJECT}/audit", expect=200, params={"limit": 200}).json()["items"]
    actions = {a["action"] for a in audit if a["entity_id"] == run["id"]}
    assert {f"pipeline_run.{s}" for s in ("start", "collect", "train", "gate", "canary", "judge", "promote",
                                          "finish")} <= actions  # fmt: skip
    receiver: Receiver = loop["receiver"]
    wait_for("the run's webhooks", lambda: "run.finished" in receiver.events(run["id"]), 60)
    # one of each, in any order: deliveries of one moment are sent together
    assert sorted(receiver.events(run["id"])) == ["model.promoted", "run.finished", "run.started"]
    assert all(d["signed"] for d in receiver.got)
    finished = next(
        d for d in receiver.got if d["event"] == "run.finished" and d["data"]["run_id"] == run["id"]
    )
    assert [s["name"] for s in finished["data"]["steps"]] == [s["name"] for s in run["steps"]]
    assert traffic.failed == 0 and traffic.events_refused == 0


def test_a_candidate_trained_on_shuffled_grades_is_refused_at_the_gate(loop: dict[str, Any]) -> None:
    stack: Stack = loop["stack"]
    pipeline = _pipeline(
        stack,
        name="shuffled-strict",
        role="retriever",
        training={"job_type": "bi_encoder", "dataset_version_id": loop["versions"]["shuffled"],
                  "base_model": loop["tiny"], "hyperparameters": {**TRAIN, "learning_rate": 1e-4}},
        gate={"golden_dataset_version_id": loop["versions"]["golden"],
              "rules": [{"metric": "catalog_ndcg@10", "max_drop": 0.0}]},
    )  # fmt: skip
    stack.api("POST", f"/pipelines/{pipeline['id']}/run", expect=202)
    run = _run_ends(loop, pipeline["id"], 600)
    assert run["status"] == "refused", run
    assert run["outcome"].startswith("refused at gate: catalog_ndcg@10 0.")
    assert "< production 0." in run["outcome"]
    tasks = stack.api("GET", f"/projects/{PROJECT}/tasks", expect=200).json()["items"]
    [task] = [t for t in tasks if t["title"] == f"Gate refused shuffled-strict run #{run['number']}"]
    assert run["outcome"] in task["description"] and task["assignee_id"] == pipeline["owner_id"]
    wait_for("the refusal's webhook", lambda: "gate.refused" in loop["receiver"].events(run["id"]), 60)


def test_an_approved_candidate_worse_with_shoppers_is_rolled_back(loop: dict[str, Any]) -> None:
    stack: Stack = loop["stack"]
    traffic: Traffic = loop["shoppers"].traffic
    me = stack.api("GET", "/users/me", expect=200).json()
    maintainer = stack.api(
        "POST", "/users", expect=201, json={"name": "Mae", "email": "mae@example.com"}
    ).json()
    stack.api("POST", f"/projects/{PROJECT}/members", expect=201,
              json={"user_id": maintainer["id"], "role": "maintainer"})  # fmt: skip
    before = stack.api("GET", f"/projects/{PROJECT}/deployments", expect=200).json()[0]["model_version_id"]
    stack.api("POST", f"/projects/{PROJECT}/tasks", expect=201,
              json={"title": "Label the new catalog", "assignee_id": me["id"], "estimate_hours": 4})  # fmt: skip
    pipeline = _pipeline(
        stack,
        name="shuffled-lenient",
        role="retriever",
        training={"job_type": "bi_encoder", "dataset_version_id": loop["versions"]["shuffled"],
                  "base_model": loop["tiny"], "hyperparameters": {**TRAIN, "learning_rate": 1e-4}},
        gate={"golden_dataset_version_id": loop["versions"]["golden"],
              "rules": [{"metric": "catalog_ndcg@10", "at_least": -1}]},
        rollout=ROLLOUT,
        require_approval=True,
    )  # fmt: skip
    stack.api("POST", f"/pipelines/{pipeline['id']}/run", expect=202)
    waiting = _run_ends(loop, pipeline["id"], 600, approve=True)
    assert waiting["status"] == "awaiting_approval", waiting
    task = stack.api("GET", f"/tasks/{waiting['links']['approval_task_id']}", expect=200).json()
    # the project's owner has hours of open work, the maintainer none: the maintainer gets the task
    assert task["assignee_id"] == maintainer["id"] != me["id"]
    time.sleep(3)
    assert (
        stack.api("GET", f"/pipeline-runs/{waiting['id']}", expect=200).json()["status"]
        == "awaiting_approval"
    )
    for status in ("in_progress", "in_review", "done"):
        stack.api("PATCH", f"/tasks/{task['id']}", expect=200, json={"status": status})
    run = _run_ends(loop, pipeline["id"], 900)
    assert run["status"] == "rolled_back", run
    [look] = run["judge"]["looks"]
    assert look["candidate"]["rate"] < look["primary"]["rate"] and look["p_worse"] < 0.05, look
    assert [s["name"] for s in run["steps"]][-4:] == ["approve", "canary", "judge", "rollback"]
    deployed = stack.api("GET", f"/projects/{PROJECT}/deployments", expect=200).json()[0]
    assert deployed["model_version_id"] == before and deployed["canary_model_version_id"] is None
    wait_for("the rollback's webhook", lambda: "model.rolled_back" in loop["receiver"].events(run["id"]), 60)
    assert traffic.failed == 0 and traffic.events_refused == 0
