"""`recforge projects`: create, list, show and update projects (budget included), through the API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, get_pages, response_error
from services.cli.console import console, err_console, fail, load_settings
from shared.models.enums import ProjectStatus

app = typer.Typer(
    help="Create, list, show and update projects, budget included (through the API).",
    no_args_is_help=True,
)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
Project = Annotated[str, typer.Argument(help="The project's id or slug.")]
Name = Annotated[str | None, typer.Option(help="A display name.")]
Description = Annotated[str | None, typer.Option(help="What the project is for.")]
CpuHours = Annotated[float | None, typer.Option(min=0, help="The CPU-hours the project may use.")]
GpuHours = Annotated[float | None, typer.Option(min=0, help="The GPU-hours the project may use.")]
MaxJobs = Annotated[int | None, typer.Option(min=1, max=64, help="Jobs the project may run at once.")]


def _budget(cpu_hours: float | None, gpu_hours: float | None) -> dict[str, float]:
    budget = {}
    if cpu_hours is not None:
        budget["cpu_hours"] = cpu_hours
    if gpu_hours is not None:
        budget["gpu_hours"] = gpu_hours
    return budget


def _hours(budget: dict[str, Any], unit: str) -> str:
    return f"{budget[f'used_{unit}_hours']:.2f} of {budget[f'{unit}_hours']:.2f} used"


def _show(project: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    budget = project["budget"]
    rows = [
        ("slug", project["slug"]),
        ("id", project["id"]),
        ("name", project["name"]),
        ("status", project["status"]),
        ("your role", project.get("my_role") or "-"),
        ("CPU-hours", _hours(budget, "cpu")),
        ("GPU-hours", _hours(budget, "gpu")),
        ("jobs at once", str(project["max_concurrent_jobs"])),
    ]
    if project.get("description"):
        rows.append(("description", project["description"]))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@app.command("create")
def create(
    slug: Annotated[
        str,
        typer.Argument(
            help="Lowercase letters, digits and dashes, 2-63 characters: the project's name in URLs."
        ),
    ],
    name: Name = None,
    description: Description = None,
    cpu_hours: CpuHours = None,
    gpu_hours: GpuHours = None,
    max_concurrent_jobs: MaxJobs = None,
    proposed: Annotated[
        bool, typer.Option("--proposed", help="Create it as proposed, not active (it runs jobs either way).")
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Create a project owned by the key's user. Without --cpu-hours/--gpu-hours it gets the
    installation's default budget (RECFORGE_DEFAULT_CPU_HOURS, RECFORGE_DEFAULT_GPU_HOURS)."""
    body: dict[str, Any] = {
        "slug": slug,
        "name": name or slug,
        "status": "proposed" if proposed else "active",
    }
    if description is not None:
        body["description"] = description
    if budget := _budget(cpu_hours, gpu_hours):
        body["budget"] = budget
    if max_concurrent_jobs is not None:
        body["max_concurrent_jobs"] = max_concurrent_jobs
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.post("/api/v1/projects", json=body)
    if response.status_code != 201:
        response_error(response)
    project = response.json()
    err_console.print(f"Created project {project['slug']}")
    _show(project)


@app.command("list")
def list_(
    status: Annotated[ProjectStatus | None, typer.Option(help="Only projects in this status.")] = None,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The projects the key's user is a member of (admins: every project), with their full ids."""
    settings = load_settings()
    params = {"status": status.value} if status is not None else {}
    with api_client(settings, url, key) as client:
        projects = get_pages(client, "/api/v1/projects", params)
    if not projects:
        err_console.print("No projects yet: create one with `recforge projects create SLUG`.")
        return
    table = Table("slug", "id", "status", "role", "CPU-hours")
    table.columns[1].no_wrap = True  # ids are pasted into later commands whole
    for project in projects:
        table.add_row(
            project["slug"],
            project["id"],
            project["status"],
            project.get("my_role") or "-",
            _hours(project["budget"], "cpu"),
        )
    console.print(table)


@app.command("show")
def show(project: Project, url: ApiUrl = None, key: ApiKey = None) -> None:
    """One project: its id, status, your role and its budget."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.get(f"/api/v1/projects/{project}")
    if response.status_code != 200:
        response_error(response)
    _show(response.json())


@app.command("update")
def update(
    project: Project,
    name: Name = None,
    description: Description = None,
    status: Annotated[ProjectStatus | None, typer.Option(help="Move the project to this status.")] = None,
    cpu_hours: CpuHours = None,
    gpu_hours: GpuHours = None,
    max_concurrent_jobs: MaxJobs = None,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Change what is given and keep the rest: e.g. `--cpu-hours 20` raises the CPU budget only."""
    body: dict[str, Any] = {}
    for field, value in (
        ("name", name),
        ("description", description),
        ("max_concurrent_jobs", max_concurrent_jobs),
    ):
        if value is not None:
            body[field] = value
    if status is not None:
        body["status"] = status.value
    if budget := _budget(cpu_hours, gpu_hours):
        body["budget"] = budget
    if not body:
        fail("nothing to change: give at least one option (see `recforge projects update --help`)")
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.patch(f"/api/v1/projects/{project}", json=body)
    if response.status_code != 200:
        response_error(response)
    err_console.print(f"Updated project {response.json()['slug']}")
    _show(response.json())
