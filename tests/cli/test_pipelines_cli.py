"""`recforge pipelines` and `recforge webhooks` against a running API, in subprocesses as a user runs
them: pipelines saved from options and from files (and refused with the field that is wrong), runs
started, listed, refused and cancelled, webhooks created, tested against a real receiver and deleted."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from tests.support.pipelines import small_shop
from tests.support.processes import cli_env, recforge

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
S = r"[\s│]+"  # what separates a table's cells
SECRET = "a-secret-of-the-receiver-0123456789"

COMMANDS = [["pipelines"], ["pipelines", "create"], ["pipelines", "list"], ["pipelines", "show"],
            ["pipelines", "update"], ["pipelines", "pause"], ["pipelines", "resume"], ["pipelines", "delete"],
            ["pipelines", "run"], ["pipelines", "runs"], ["pipelines", "runs", "list"],
            ["pipelines", "runs", "show"], ["pipelines", "runs", "watch"], ["pipelines", "runs", "approve"],
            ["pipelines", "runs", "reject"], ["pipelines", "runs", "cancel"], ["webhooks"],
            ["webhooks", "create"], ["webhooks", "list"], ["webhooks", "update"], ["webhooks", "delete"],
            ["webhooks", "deliveries"], ["webhooks", "test"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_pipeline_and_webhook_command_has_help(command: list[str]) -> None:
    result = recforge(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line a refused command prints on stderr (and exit code 1)."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _env(settings: Settings, api_server: str) -> dict[str, str]:
    made = recforge("keys", "create", "--role", "admin", env=cli_env(settings))
    assert made.returncode == 0, made.stderr
    return cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=made.stdout.strip())


def _shop(env: dict[str, str], folder: Path) -> tuple[str, str]:
    """A project `shop` (the key's user owns it) with a catalog, judgments to train on and a golden
    set: (the judgments' version, the golden set's version)."""
    ok(recforge("projects", "create", "shop", env=env))
    shop, train, golden = small_shop()
    (folder / "catalog.csv").write_text(shop.catalog_csv())
    (folder / "judgments.csv").write_text(train)
    (folder / "golden.csv").write_text(golden)
    ok(recforge("data", "import", str(folder / "catalog.csv"), "-p", "shop", "--kind", "catalog", env=env))
    versions = []
    for name in ("judgments", "golden"):
        made = recforge("data", "import", str(folder / f"{name}.csv"), "-p", "shop", "--kind", "relevance",
                        "--name", name, "--quiet", env=env)  # fmt: skip
        versions.append(ok(made).strip())
    return versions[0], versions[1]


def _nightly(env: dict[str, str], train: str, golden: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return recforge(
        "pipelines", "create", "-p", "shop", "--name", "nightly", "--job-type", "bi_encoder",
        "--dataset-version", train, "--cron", "0 3 * * *", "--golden", golden,
        "--rule", "catalog_ndcg@10 max_drop 0.01", "--rule", "ndcg@10 at_least 0.1 beat_baselines",
        "--canary-percent", "50", "--require-approval", "--set", "max_steps=5", *extra, env=env,
    )  # fmt: skip


def test_pipelines_from_options_and_from_files(settings: Settings, api_server: str, tmp_path: Path) -> None:
    env = _env(settings, api_server)
    train, golden = _shop(env, tmp_path)

    created = _nightly(env, train, golden)
    assert "Created pipeline nightly" in ok(created) + created.stderr
    assert re.search(r"rule\s+catalog_ndcg@10 max_drop 0.01 *$", created.stdout, re.M)
    assert re.search(r"rule\s+ndcg@10 at_least 0.1 beat_baselines *$", created.stdout, re.M)
    assert re.search(r"cron 0 3 \* \* \*, next \d{4}-\d\d-\d\d 03:00:00 UTC", created.stdout)
    assert re.search(r"approval\s+required, from a maintainer or above", created.stdout)
    assert "50% canary" in created.stdout and f"bi_encoder on dataset version {train}" in created.stdout

    # the API's 422 is one line naming the field, whether the service or the schema refuses it
    bad_metric = recforge("pipelines", "create", "-p", "shop", "--name", "bad", "--job-type", "bi_encoder",
                          "--dataset-version", train, "--golden", golden, "--rule", "accuracy at_least 0.5",
                          env=env)  # fmt: skip
    refused(bad_metric, "HTTP 422: gate.rules.0.metric:", "it cannot give accuracy")
    typo = recforge("pipelines", "create", "-p", "shop", "--name", "bad", "--job-type", "bi_encoder",
                    "--dataset", "judgments", "--set", "max_stpes=5", env=env)  # fmt: skip
    refused(typo, "HTTP 422: training.hyperparameters", "max_stpes")
    refused(
        recforge("pipelines", "create", "-p", "shop", "--name", "bad", "--job-type", "bi_encoder",
                 "--dataset", "judgments", "--golden", golden, "--rule", "ndcg@10 above 0.5", env=env),
        "'above' is not a check",
    )  # fmt: skip
    refused(
        recforge("pipelines", "create", "-p", "shop", "--name", "bad", "--job-type", "bi_encoder", env=env),
        "give one of --dataset NAME, --dataset-version ID or --feedback-days D",
    )

    body: dict[str, Any] = {
        "name": "on-new-judgments",
        "role": "retriever",
        "triggers": {"dataset": "judgments"},
        "training": {"job_type": "bi_encoder", "dataset": "judgments", "hyperparameters": {"max_steps": 5}},
        "gate": {"golden_dataset_version_id": golden, "rules": [{"metric": "ndcg@10", "max_drop": 0.02}]},
        "rollout": {"canary_percent": 0},
    }
    (tmp_path / "pipeline.json").write_text(json.dumps(body))
    from_file = recforge("pipelines", "create", "-p", "shop", "--file", str(tmp_path / "pipeline.json"),
                         "--quiet", env=env)  # fmt: skip
    second = ok(from_file).strip()
    assert re.fullmatch(UUID, second)
    (tmp_path / "bad.json").write_text(json.dumps({**body, "name": "bad", "triggers": {"cron": "nightly"}}))
    refused(
        recforge("pipelines", "create", "-p", "shop", "--file", str(tmp_path / "bad.json"), env=env),
        "HTTP 422: triggers.cron: 'nightly' is not a cron schedule",
    )
    refused(
        recforge("pipelines", "create", "-p", "shop", "-f", str(tmp_path / "pipeline.json"), "--cron", "0 1 * * *",
                 env=env),
        "--file or with options, not both",
    )  # fmt: skip
    (tmp_path / "broken.json").write_text("{")
    refused(recforge("pipelines", "create", "-p", "shop", "-f", str(tmp_path / "broken.json"), env=env),
            "is not valid JSON")  # fmt: skip

    listed = ok(recforge("pipelines", "list", "-p", "shop", env=env))
    assert second in listed  # whole, never cut to fit the terminal
    first = re.search(rf"nightly{S}({UUID})", listed)
    assert first is not None, listed
    nightly = first.group(1)
    assert "each new version of judgments" in listed

    shown = ok(recforge("pipelines", "show", nightly, env=env))
    assert shown == ok(recforge("pipelines", "show", "nightly", "-p", "shop", env=env))
    assert re.search(r"hyperparameters\s+epochs=1, max_steps=5, batch_size=32", shown), shown
    assert "None" not in shown  # what is not set is not listed
    refused(recforge("pipelines", "show", "nightly", env=env), "with --project")
    as_json = json.loads(ok(recforge("pipelines", "show", nightly, "--json", env=env)))
    assert as_json["id"] == nightly and as_json["rollout"]["canary_percent"] == 50

    (tmp_path / "patch.json").write_text(json.dumps({"triggers": {"cron": "30 4 * * *"}}))
    updated = ok(recforge("pipelines", "update", nightly, "--file", str(tmp_path / "patch.json"), env=env))
    assert "cron 30 4 * * *, next" in updated

    paused = ok(recforge("pipelines", "pause", nightly, env=env))
    assert f"Pipeline nightly ({nightly}): paused" in paused and "next cron tick" not in paused
    assert re.search(
        rf"nightly{S}{UUID}{S}retriever{S}paused", ok(recforge("pipelines", "list", "-p", "shop", env=env))
    )
    resumed = ok(recforge("pipelines", "resume", "nightly", "-p", "shop", env=env))
    assert "active; next cron tick" in resumed and "04:30:00 UTC" in resumed

    # nobody at a terminal to ask: deleting needs --yes
    refused(recforge("pipelines", "delete", second, env=env), "pass --yes")
    assert second in ok(recforge("pipelines", "list", "-p", "shop", env=env))
    assert f"Deleted pipeline on-new-judgments ({second})" in ok(
        recforge("pipelines", "delete", second, "--yes", env=env)
    )
    assert second not in ok(recforge("pipelines", "list", "-p", "shop", env=env))
    refused(recforge("pipelines", "show", second, env=env), "HTTP 404")


def test_runs_are_started_listed_refused_and_cancelled(
    settings: Settings, api_server: str, tmp_path: Path
) -> None:
    env = _env(settings, api_server)
    train, golden = _shop(env, tmp_path)
    pipeline = ok(_nightly(env, train, golden, "--quiet")).strip()
    assert re.fullmatch(UUID, pipeline)
    assert "No runs yet" in recforge("pipelines", "runs", "list", "-p", "shop", env=env).stderr

    started = recforge("pipelines", "run", pipeline, "--note", "from the test", "--quiet", env=env)
    run = ok(started).strip()
    assert re.fullmatch(UUID, run)

    listed = ok(recforge("pipelines", "runs", "list", "-p", "shop", env=env))
    assert re.search(rf"{run}{S}1{S}nightly{S}manual{S}running{S}train{S}", listed), listed
    mine = ok(recforge("pipelines", "runs", "list", "-p", "shop", "--pipeline", "nightly", "--status",
                       "running", "--status", "awaiting_approval", env=env))  # fmt: skip
    assert run in mine
    none = recforge("pipelines", "runs", "list", "-p", "shop", "--status", "promoted", env=env)
    assert ok(none) == "" and "No runs yet" in none.stderr

    shown = ok(recforge("pipelines", "runs", "show", run, env=env))
    assert "Run #1 of nightly: running (train)" in shown
    assert re.search(r"trigger\s+manual", shown) and re.search(rf"train{S}running", shown)
    assert json.loads(ok(recforge("pipelines", "runs", "show", run, "--json", env=env)))["id"] == run

    # one run at a time; approving a run that waits for nothing: the API's 409, in its words
    refused(
        recforge("pipelines", "run", pipeline, env=env), "HTTP 409", "run #1 of this pipeline is still going"
    )
    refused(
        recforge("pipelines", "runs", "approve", run, "--reason", "looks fine", env=env),
        "HTTP 409: run #1 is not waiting for approval: it is running (train)",
    )
    refused(recforge("pipelines", "delete", pipeline, "--yes", env=env), "HTTP 409", "cancel it first")

    cancelled = ok(recforge("pipelines", "runs", "cancel", run, env=env))
    assert f"run #1 {run}: cancelled" in cancelled
    watched = recforge("pipelines", "runs", "watch", run, env=env)
    assert watched.returncode == 1  # a cancelled run: 1, as a failed one
    assert re.search(r"^\d\d:\d\d:\d\d  train\s+failed\s+cancelled by user", watched.stderr, re.M)
    assert "error: run #1 cancelled" in watched.stderr
    refused(recforge("pipelines", "runs", "reject", run, env=env), "HTTP 409: run #1 has ended (cancelled)")
    refused(recforge("pipelines", "runs", "show", "not-a-run", env=env), "is not a run id", "runs list")


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers 200 and keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        lock = threading.Lock()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/recforge"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()
        thread.join(timeout=5)


def test_webhooks_are_created_tested_and_deleted(
    settings: Settings, api_server: str, receiver: Receiver
) -> None:
    env = _env(settings, api_server)
    ok(recforge("projects", "create", "shop", env=env))
    assert "No webhooks yet" in recforge("webhooks", "list", "-p", "shop", env=env).stderr

    refused(
        recforge("webhooks", "create", "-p", "shop", "--url", receiver.url, "--event", "run.finishd", env=env),
        "HTTP 422: events:", "unknown events ['run.finishd']",
    )  # fmt: skip
    refused(recforge("webhooks", "create", "-p", "shop", "--url", receiver.url, env=env), "--event")

    created = recforge("webhooks", "create", "-p", "shop", "--url", receiver.url, "--event", "run.finished",
                       "--event", "model.promoted", "--secret", SECRET, env=env)  # fmt: skip
    assert "shown only once" in ok(created) + created.stderr
    assert created.stdout.strip().splitlines()[-1] == SECRET  # the secret alone on its line, to copy
    hook = re.search(UUID, created.stdout)
    assert hook is not None
    hook_id = hook.group(0)
    quiet = recforge("webhooks", "create", "-p", "shop", "--url", receiver.url, "--event", "run.started",
                     "--quiet", env=env)  # fmt: skip
    other = ok(quiet).strip()
    assert re.fullmatch(UUID, other) and "shown only once" in quiet.stderr  # the generated secret, once

    listed = ok(recforge("webhooks", "list", "-p", "shop", env=env))
    assert hook_id in listed and other in listed and SECRET not in listed
    assert re.search(rf"{hook_id}\s.*run\.finished", listed)

    tested = ok(recforge("webhooks", "test", hook_id, env=env))  # the api's delivery loop sends it
    assert re.search(rf"delivered test \({UUID}\): the receiver answered HTTP 200", tested), tested
    assert [json.loads(body)["event"] for _, body in receiver.requests] == ["test"]
    assert receiver.requests[0][0]["X-RecForge-Signature"].startswith("t=")

    deliveries = ok(recforge("webhooks", "deliveries", hook_id, env=env))
    assert re.search(rf"{UUID}{S}test{S}delivered{S}1{S}200{S}", deliveries), deliveries
    none = recforge("webhooks", "deliveries", hook_id, "--status", "failed", env=env)
    assert ok(none) == "" and "No deliveries failed yet" in none.stderr

    off = ok(recforge("webhooks", "update", hook_id, "--inactive", "--event", "run.finished", env=env))
    assert re.search(rf"{hook_id}{S}.*run\.finished{S}no{S}", off), off
    refused(recforge("webhooks", "test", hook_id, env=env), "HTTP 409")
    refused(recforge("webhooks", "update", hook_id, env=env), "nothing to change")

    refused(recforge("webhooks", "delete", hook_id, env=env), "pass --yes")
    assert f"Deleted webhook {hook_id}" in ok(recforge("webhooks", "delete", hook_id, "--yes", env=env))
    assert hook_id not in ok(recforge("webhooks", "list", "-p", "shop", env=env))
    refused(recforge("webhooks", "deliveries", hook_id, env=env), "HTTP 404")
