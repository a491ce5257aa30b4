"""`recforge demo` on a stack `recforge up --detach` started with nothing configured: the project is staffed,
data imported, both models trained, the retriever promoted, and /recommend answers.

A tiny random BERT and a small sample shop stand in for MiniLM and the 3,000-product default, so the walk
runs in about a minute; every request goes over HTTP to real processes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from services.cli.walkthrough import data_source
from shared.errors import ValidationFailed
from tests.support.models import tiny_bert
from tests.support.processes import CLI, stack_env


@pytest.mark.slow
def test_demo_walks_a_project_from_data_to_recommend(tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path / "stack")
    env["HF_HUB_OFFLINE"] = "1"
    cli = CLI
    model = tiny_bert(tmp_path / "tiny")
    try:
        up = subprocess.run([*cli, "up", "--detach"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        args = [
            "--base-model",
            str(model),
            "--steps",
            "20",
            "--cross-steps",
            "20",
            "--products",
            "200",
            "--queries",
            "120",
        ]
        demo = subprocess.run([*cli, "demo", *args], env=env, capture_output=True, text=True, timeout=600)
        out = demo.stdout
        assert demo.returncode == 0, out[-3000:] + demo.stderr[-3000:]
        for step in ("People", "Project", "Data", "Fine-tuning", "Evaluation", "Deployment", "/recommend"):
            assert step in out
        assert "Demo done" in out and f"http://127.0.0.1:{ports['inference']}/docs" in out
        for label in ("BM25", "zero-shot base", "bi-encoder", "cross-encoder"):
            assert label in out
        assert '"crimson commode"' in out and "who clicked" in out

        # What the demo did is in the platform, seen through the API with the key it printed.
        key = re.search(r"export RECFORGE_API_KEY=(\S+)", out)
        assert key, out[-2000:]
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        api = f"http://127.0.0.1:{ports['api']}/api/v1/projects/demo-shop"
        members = httpx.get(f"{api}/members", headers=headers, timeout=10).json()
        assert sorted(m["role"] for m in members) == ["maintainer", "member", "owner", "viewer"]
        deployments = httpx.get(f"{api}/deployments", headers=headers, timeout=10).json()
        assert "retriever" in {d["role"] for d in deployments}
        tasks = httpx.get(f"{api}/tasks", headers=headers, timeout=10).json()["items"]
        status = {t["title"]: t["status"] for t in tasks}
        assert status["Import the catalog and the graded judgments"] == "done"
        assert status["Promote the best versions to production"] == "done"
        jobs = httpx.get(f"{api}/training-jobs", headers=headers, timeout=10).json()["items"]
        assert sorted(j["job_type"] for j in jobs) == ["bi_encoder", "cross_encoder"]
        assert all(j["status"] == "succeeded" for j in jobs)
        # it ends with the loop set up: a pipeline that retrains from shoppers, and where to watch it
        [pipeline] = httpx.get(f"{api}/pipelines", headers=headers, timeout=10).json()
        assert pipeline["name"] == "learn-from-shoppers" and pipeline["triggers"]["min_new_events"] == 2000
        assert pipeline["training"]["feedback"] is not None and pipeline["status"] == "active"
        assert "recforge simulate -p demo-shop --judgments" in out and "recforge pipelines runs watch" in out

        # A second run leaves the first project alone and makes demo-shop-2.
        again = subprocess.run(
            [*cli, "demo", *args, "--api-key", key.group(1)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "demo-shop-2" in again.stdout

        # `recforge demo > out.txt` in a narrow terminal (COLUMNS=40): the curl and export lines it printed
        # are whole, and run as they are when pasted
        printed = tmp_path / "out.txt"
        with printed.open("w") as out_txt:
            narrow = subprocess.run(
                [*cli, "demo", *args], env={**env, "COLUMNS": "40"}, stdout=out_txt, stderr=subprocess.PIPE,
                text=True, timeout=600,
            )  # fmt: skip
        assert narrow.returncode == 0, narrow.stderr[-3000:]
        pasted = _copyable(printed.read_text())
        assert pasted.count("\n") >= 2, pasted
        ran = subprocess.run(["bash", "-euc", pasted + "\necho $RECFORGE_API_KEY"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert ran.returncode == 0, pasted + ran.stderr
        answer, _, exported = ran.stdout.rpartition("}")
        assert json.loads(answer + "}")["items"], ran.stdout
        assert exported.strip() == key_printed(printed.read_text())
    finally:
        subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=60)


def key_printed(out: str) -> str:
    key = re.search(r"export RECFORGE_API_KEY=(\S+)", out)
    assert key, out[-2000:]
    return key.group(1)


def _copyable(printed: str) -> str:
    """The export line and the curl command (with its continuation lines) the demo printed, as a shell
    script, exactly as a reader would paste them."""
    lines = printed.splitlines()
    script = [line.split("#")[0].strip() for line in lines if line.strip().startswith("export ")]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    end = start
    while lines[end].rstrip().endswith("\\"):
        end += 1
    return "\n".join([*script, *(line.strip() for line in lines[start : end + 1])])


def test_demo_data_is_recognised_or_refused_with_a_reason(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text("id,product_uid,product_title,search_term,relevance\n")
    assert data_source(csv) == ("homedepot", [csv])
    wands = tmp_path / "wands"
    wands.mkdir()
    for name in ("product.csv", "query.csv", "label.csv"):
        (wands / name).write_text("x\n")
    assert data_source(wands)[0] == "wands"
    esci = tmp_path / "esci"
    esci.mkdir()
    for name in ("shopping_queries_dataset_examples.parquet", "shopping_queries_dataset_products.parquet"):
        (esci / name).write_bytes(b"")
    assert data_source(esci)[0] == "esci"
    with pytest.raises(ValidationFailed, match="not an ESCI folder"):
        data_source(tmp_path)
    with pytest.raises(ValidationFailed, match="no such file"):
        data_source(tmp_path / "missing")
