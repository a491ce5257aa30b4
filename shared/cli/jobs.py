"""`recforge jobs`: submit training jobs and follow them, through the API."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shared.cli.client import API_KEY_HELP, API_URL_HELP, api_client, response_error
from shared.cli.common import console, err_console, fail, load_settings
from shared.models.enums import JobType

app = typer.Typer(
    help="Submit training jobs and follow their progress (through the API).", no_args_is_help=True
)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
TERMINAL = {"succeeded", "failed", "cancelled"}


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            fail(f"--set takes NAME=VALUE, not {pair!r}")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values


def watch_job(client: Any, job_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Poll the job and draw its progress until it ends; return the final job."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("queued", total=None, detail="")
        while True:
            response = client.get(f"/api/v1/training-jobs/{job_id}")
            if response.status_code != 200:
                response_error(response)
            job: dict[str, Any] = response.json()
            p = job.get("progress") or {}
            detail = []
            if p.get("loss") is not None:
                detail.append(f"loss {p['loss']:.4f}")
            if p.get("pairs_per_s"):
                detail.append(f"{p['pairs_per_s']} pairs/s")
            progress.update(
                task,
                description=f"{job['status']}: {p.get('phase', '')}".strip(": "),
                completed=p.get("step", 0),
                total=p.get("total_steps"),
                detail=", ".join(detail),
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)


def _print_outcome(client: Any, job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        fail(f"job {job['id']} {job['status']}: {job.get('error') or ''}".strip())
    for version_id in job.get("model_version_ids", []):
        response = client.get(f"/api/v1/model-versions/{version_id}")
        if response.status_code != 200:
            response_error(response)
        model = response.json()
        console.print(f"Model version {model['version']} ({model['task_type']}), id {model['id']}")
        keys = [k for k, v in model["metrics"].items() if isinstance(v, int | float) and k != "queries"]
        table = Table("model", *keys)
        rows = {"fine-tuned": model["metrics"], **model["baselines"]}
        for name, metrics in rows.items():
            table.add_row(name, *(f"{metrics[k]:.4f}" if k in metrics else "-" for k in keys))
        console.print(table)


@app.command("submit")
def submit(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    job_type: Annotated[JobType, typer.Option("--type", help="bi_encoder, cross_encoder or classifier.")],
    dataset_version: Annotated[
        str, typer.Option("--dataset-version", help="The dataset version to train on.")
    ],
    base_model: Annotated[str | None, typer.Option(help="A local folder or hub id (default MiniLM).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A hyperparameter, NAME=VALUE (repeatable), e.g. max_steps=200."),
    ] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="9 runs first.")] = 5,
    compute_limit_hours: Annotated[float, typer.Option(help="The most compute the job may use.")] = 1.0,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat-safe submission key.")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the job until it ends.")] = True,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Queue a fine-tuning job; by default follow it with a progress bar and print its evaluation."""
    settings = load_settings()
    body: dict[str, Any] = {
        "job_type": job_type.value,
        "dataset_version_id": dataset_version,
        "hyperparameters": _hyperparameters(set_ or []),
        "priority": priority,
        "compute_limit_hours": compute_limit_hours,
    }
    if base_model:
        body["base_model"] = base_model
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with api_client(settings, url, key) as client:
        response = client.post(f"/api/v1/projects/{project}/training-jobs", json=body, headers=headers)
        if response.status_code != 202:
            response_error(response)
        job = response.json()
        err_console.print(f"Queued job {job['id']}")
        if not watch:
            console.print(job["id"])
            return
        _print_outcome(client, watch_job(client, job["id"]))


@app.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="A training job id.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Follow a job's progress until it ends, then print its evaluation."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        _print_outcome(client, watch_job(client, job_id))


@app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="A training job id.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Cancel a queued or running job."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.post(f"/api/v1/training-jobs/{job_id}/cancel")
    if response.status_code != 202:
        response_error(response)
    console.print(f"job {job_id}: {response.json()['status']}")
