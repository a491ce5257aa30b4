"""`recforge jobs`: submit training jobs and follow them, through the API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, get_json, get_pages, response_error
from services.cli.console import console, err_console, fail, load_settings
from shared.models.enums import JobType
from shared.training import parse_assignment

app = typer.Typer(
    help="Submit training jobs and follow their progress (through the API).", no_args_is_help=True
)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
TERMINAL = {"succeeded", "failed", "cancelled"}


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        try:
            name, value = parse_assignment(pair)
        except ValueError as exc:
            fail(f"--set {exc}")
        values[name] = value
    return values


def watch_job(client: Any, job_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Poll the job and draw its progress until it ends; return the final job."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("queued", total=None, detail="", unit="steps")
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
            phase = p.get("phase", "")
            if phase != "train" and p.get("total"):  # evaluation, baselines, indexing: texts embedded
                done, total, unit = p.get("done", 0), p["total"], p.get("evaluating", "texts")
                detail = []
            else:
                done, total, unit = p.get("step", 0), p.get("total_steps"), "steps"
            progress.update(
                task,
                description=f"{job['status']}: {phase}".strip(": "),
                completed=done,
                total=total,
                unit=unit,
                detail=", ".join(detail),
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)


def metrics_table(metrics: dict[str, Any], baselines: dict[str, Any], name: str) -> Table:
    """One row per metric, one column per model: readable in a narrow terminal."""
    keys = [
        k for k, v in metrics.items() if isinstance(v, int | float) and k not in ("queries", "catalog_size")
    ]
    columns = {name: metrics, **baselines}
    table = Table("metric", *columns)
    for key in keys:
        table.add_row(key, *(f"{values[key]:.4f}" if key in values else "-" for values in columns.values()))
    return table


def _print_result(job: dict[str, Any]) -> None:
    result = job.get("result") or {}
    if job["job_type"] == "evaluate":
        console.print(
            f"Model version {result['model_version_id']} on dataset version {result['dataset_version_id']}"
        )
        console.print(metrics_table(result["metrics"], result["baselines"], "model"))
    elif job["job_type"] == "export":
        for name, entry in result.get("files", {}).items():
            console.print(f"{name:12} {entry['path']}  {entry['bytes']:,} bytes")
        console.print(
            f"int8 ({result['int8_preset']}): metric drop {result['int8_metric_drop']:.4f}, "
            f"servable {result['int8_servable']}; fp16 max abs diff {result['fp16_max_abs_diff']}"
        )
    elif job["job_type"] == "feedback":
        print_feedback(result)
    elif job["job_type"] == "index":
        console.print(
            f"Embedded {result['count']:,} products ({result['dim']} dimensions, {result['model_file']}) "
            f"into {result['files']['embeddings']['path']}"
        )


def print_feedback(result: dict[str, Any]) -> None:
    graded = result.get("relevance", {})
    console.print(
        f"{result.get('impressions', 0):,} impressions and {result.get('events', 0):,} events read: "
        f"{graded.get('searches', 0):,} searches, {graded.get('pairs_kept', 0):,} of "
        f"{graded.get('pairs_seen', 0):,} (query, product) pairs shown often enough to grade"
    )
    for written in result.get("dataset_versions", []):
        made = "new version" if written["created"] else "the same rows as version"
        console.print(
            f"{written['kind']:10} {written['name']} {made} {written['version']}: {written['rows']:,} rows, "
            f"id {written['dataset_version_id']}",
            highlight=False,
        )


def _print_outcome(client: Any, job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        fail(f"job {job['id']} {job['status']}: {job.get('error') or ''}".strip())
    _print_result(job)
    for version_id in job.get("model_version_ids", []):
        response = client.get(f"/api/v1/model-versions/{version_id}")
        if response.status_code != 200:
            response_error(response)
        model = response.json()
        console.print(f"Model version {model['version']} ({model['task_type']}), id {model['id']}")
        console.print(metrics_table(model["metrics"], model["baselines"], "fine-tuned"))
    for warning in (job.get("result") or {}).get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {warning}")


@app.command("submit")
def submit(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    job_type: Annotated[
        JobType,
        typer.Option(
            "--type",
            help="bi_encoder, cross_encoder, classifier (fine-tunes); "
            "evaluate, export, index (on a model version).",
        ),
    ],
    dataset_version: Annotated[
        str | None,
        typer.Option(
            "--dataset-version",
            help="The data to train or evaluate on; for index, the catalog (default: the latest).",
        ),
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", help="The model version an evaluate, export or index job works on."),
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="A local folder or hub id (default MiniLM).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A hyperparameter, NAME=VALUE (repeatable), e.g. max_steps=200."),
    ] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="9 runs first.")] = 5,
    compute_limit_hours: Annotated[float, typer.Option(help="The most compute the job may use.")] = 1.0,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat-safe submission key.")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the job until it ends.")] = True,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the id of what the job made, for $(...) in scripts: a fine-tune's model "
            "version, else the job (the progress bar still shows on stderr).",
        ),
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Queue a job; by default follow it with a progress bar and print its evaluation or result."""
    settings = load_settings()
    body: dict[str, Any] = {
        "job_type": job_type.value,
        "hyperparameters": _hyperparameters(set_ or []),
        "priority": priority,
        "compute_limit_hours": compute_limit_hours,
    }
    if dataset_version:
        body["dataset_version_id"] = dataset_version
    if model_version:
        body["input_model_version_id"] = model_version
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
        done = watch_job(client, job["id"])
        if not quiet:
            _print_outcome(client, done)
            return
    if done["status"] != "succeeded":
        fail(f"job {done['id']} {done['status']}: {done.get('error') or ''}".strip())
    for warning in (done.get("result") or {}).get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {warning}")
    console.print((done.get("model_version_ids") or [done["id"]])[0], highlight=False)


@app.command("list")
def list_(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    status: Annotated[
        list[str] | None, typer.Option(help="Only jobs in this status (repeatable): queued, running, ...")
    ] = None,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The project's jobs, newest first, with full ids, progress and what they registered."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        jobs = get_pages(client, f"/api/v1/projects/{project}/training-jobs", {"status": status or []})
    if not jobs:
        err_console.print("No jobs yet: queue one with `recforge jobs submit`.")
        return
    table = Table("id", "type", "status", "progress", "model versions", "queued")
    table.columns[0].no_wrap = True  # ids are pasted into later commands whole
    table.columns[4].no_wrap = True
    for job in jobs:
        p = job.get("progress") or {}
        done = f"{p.get('step', 0)}/{p['total_steps']} steps" if p.get("total_steps") else p.get("phase", "-")
        table.add_row(
            job["id"],
            job["job_type"],
            job["status"],
            done or "-",
            "\n".join(job.get("model_version_ids") or []) or "-",
            job["queued_at"][:19].replace("T", " "),
        )
    console.print(table)


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
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the job to stop (0: do not wait).")
    ] = 60.0,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Cancel a queued or running job and wait until it has stopped (a running job stops at its next
    checkpoint of work, within seconds)."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.post(f"/api/v1/training-jobs/{job_id}/cancel")
        if response.status_code != 202:
            response_error(response)
        job = response.json()
        deadline = time.monotonic() + timeout
        with err_console.status(f"waiting for job {job_id} to stop"):
            while job["status"] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                job = get_json(client, f"/api/v1/training-jobs/{job_id}")
    if job["status"] in TERMINAL:
        console.print(f"job {job_id}: {job['status']}")
    else:
        console.print(f"job {job_id}: cancel requested; the job stops at its next checkpoint")
