"""`recforge models` and `recforge deployments`: a project's model versions, their promotion into
serving, and what serves now, through the API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, get_json, get_pages, response_error
from services.cli.console import console, err_console, load_settings
from services.cli.jobs import metrics_table

app = typer.Typer(
    help="A project's model versions: list, show, promote (through the API).", no_args_is_help=True
)
deployments_app = typer.Typer(
    help="What each project serves now, and before (through the API).", no_args_is_help=True
)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
Project = Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")]
Version = Annotated[str, typer.Argument(help="A model version id.")]


def _headline(metrics: dict[str, Any]) -> str:
    for name in ("ndcg@10", "recall@10", "accuracy", "mrr@10"):
        if isinstance(metrics.get(name), int | float):
            return f"{name} {metrics[name]:.4f}"
    return "-"


@app.command("list")
def list_(project: Project, url: ApiUrl = None, key: ApiKey = None) -> None:
    """The project's model versions, newest first, with full ids and a headline metric."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        versions = get_pages(client, f"/api/v1/projects/{project}/model-versions")
    if not versions:
        err_console.print("No model versions yet: fine-tune one with `recforge jobs submit`.")
        return
    table = Table("version", "id", "task", "status", "metric", "created")
    table.columns[1].no_wrap = True  # ids are pasted into later commands whole
    for version in versions:
        table.add_row(
            str(version["version"]),
            version["id"],
            version["task_type"],
            version["status"],
            _headline(version.get("metrics") or {}),
            version["created_at"][:19].replace("T", " "),
        )
    console.print(table)


@app.command("show")
def show(version_id: Version, url: ApiUrl = None, key: ApiKey = None) -> None:
    """One model version: what it was trained from, and its metrics beside the baselines."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        version = get_json(client, f"/api/v1/model-versions/{version_id}")
    console.print(f"Model version {version['version']} ({version['task_type']}, {version['status']})")
    facts = Table(show_header=False, box=None)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    for name, value in (
        ("id", version["id"]),
        ("base model", version["base_model"]),
        ("training job", version.get("training_job_id") or "-"),
        ("dataset version", version.get("dataset_version_id") or "-"),
        ("promoted", (version.get("promoted_at") or "never")[:19].replace("T", " ")),
    ):
        facts.add_row(name, str(value))
    console.print(facts)
    if version.get("metrics"):
        console.print(metrics_table(version["metrics"], version.get("baselines") or {}, "this version"))


@app.command("promote")
def promote(
    version_id: Version,
    canary_percent: Annotated[
        int | None,
        typer.Option(min=1, max=99, help="Serve it to this share of traffic beside the current version."),
    ] = None,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Serve a model version in its project's role (retriever, reranker or classifier), for all
    traffic or as a canary."""
    settings = load_settings()
    body = {} if canary_percent is None else {"canary_percent": canary_percent}
    with api_client(settings, url, key) as client:
        response = client.post(f"/api/v1/model-versions/{version_id}/promote", json=body)
    if response.status_code != 200:
        response_error(response)
    deployment = response.json()
    share = (
        f"a {deployment['canary_percent']}% canary"
        if deployment.get("canary_model_version_id")
        else "all traffic"
    )
    console.print(
        f"Promoted {version_id} as the {deployment['role']} ({share}); inference loads it within seconds."
    )


@deployments_app.command("list")
def deployments(
    project: Project,
    history: Annotated[
        bool, typer.Option("--history", help="Include the deployments that were replaced.")
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """What the project serves in each role (and, with --history, what it served before)."""
    settings = load_settings()
    params = {"history": "true"} if history else None
    with api_client(settings, url, key) as client:
        rows = get_json(client, f"/api/v1/projects/{project}/deployments", params)
    if not rows:
        err_console.print(
            "Nothing deployed yet: promote a version with `recforge models promote VERSION_ID`."
        )
        return
    table = Table("role", "model version", "canary", "active", "since")
    table.columns[1].no_wrap = True
    for row in rows:
        canary = (
            f"{row['canary_model_version_id']} ({row['canary_percent']}%)"
            if row.get("canary_model_version_id")
            else "-"
        )
        table.add_row(
            row["role"],
            row["model_version_id"],
            canary,
            "yes" if row["is_active"] else "no",
            row["created_at"][:19].replace("T", " "),
        )
    console.print(table)
