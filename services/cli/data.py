"""`recforge data`: import datasets and look at their versions, through the API."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from pathlib import Path
from typing import IO, Annotated, Any, cast

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, response_error
from services.cli.console import console, err_console, fail, load_settings
from shared.datasets.formats import FORMAT_FILES, DataFormat
from shared.models.enums import DatasetKind

app = typer.Typer(help="Import datasets and inspect their versions (through the API).", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]


class _Meter:
    """Upload progress: bytes sent, then a spinner while the API validates and stores."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.total = total
        self.sent = 0
        self.task = progress.add_task("uploading", total=total or None)

    def advance(self, size: int) -> None:
        self.sent += size
        self.progress.advance(self.task, size)
        if self.sent >= self.total:
            self.progress.update(self.task, description="validating and storing")


class _Counted(io.RawIOBase):
    """A file whose reads advance the upload meter."""

    def __init__(self, handle: IO[bytes], meter: _Meter):
        self._handle = handle
        self._meter = meter

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._meter.advance(len(chunk))
        return chunk

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._handle.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{path}: no such file or folder")
    if not files:
        fail("no files to import")
    return files


def upload(client: httpx.Client, project: str, files: list[Path], fields: dict[str, str]) -> httpx.Response:
    """POST the files as one dataset import, with a progress bar over the bytes sent."""
    total = sum(f.stat().st_size for f in files)
    handles = [f.open("rb") for f in files]
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            meter = _Meter(progress, total)
            parts: list[tuple[str, tuple[str | None, IO[bytes]]]] = [
                ("file", (f.name, cast(IO[bytes], _Counted(h, meter))))
                for f, h in zip(files, handles, strict=True)
            ]
            return client.post(f"/api/v1/projects/{project}/datasets", files=parts, data=fields)
    finally:
        for handle in handles:
            handle.close()


def print_import(result: dict[str, Any]) -> None:
    verb = "Imported" if result["created"] else "Already imported (identical content)"
    console.print(
        f"{verb}: dataset [bold]{result['name']}[/] version {result['version']} "
        f"({result['kind']}, {result['format']}{', ' + result['encoding'] if result.get('encoding') else ''})"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(justify="right")
    table.add_row("rows", f"{result['rows']:,}")
    for label, key in (("items", "items"), ("users", "users"), ("queries", "queries")):
        if result.get(key) is not None:
            table.add_row(label, f"{result[key]:,}")
    for name, rows in result["tables"].items():
        table.add_row(f"table {name}", f"{rows:,}")
    splits = result.get("splits") or {}
    if splits.get("rows"):
        parts = ", ".join(f"{k} {v:,}" for k, v in splits["rows"].items())
        table.add_row(f"splits by {splits['by']}", parts)
    table.add_row("dataset id", result["id"])
    table.add_row("version id", result["version_id"])
    console.print(table)
    for warning in result.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {warning}")


def _print_errors(body: dict[str, Any]) -> None:
    detail = body.get("detail") or {}
    errors = detail.get("errors", []) if isinstance(detail, dict) else []
    # a whole-file problem is its own message, which the caller prints: only row errors go in the table
    errors = [e for e in errors if not (e.get("row") is None and e.get("reason") == body.get("message"))]
    if not errors:
        return
    table = Table(title=f"first {min(len(errors), 30)} of {detail.get('error_count', len(errors))} errors")
    for column in ("file", "row", "column", "reason", "value"):
        table.add_column(column)
    for error in errors[:30]:
        table.add_row(
            *(
                str(error.get(c) if error.get(c) is not None else "")
                for c in ("file", "row", "column", "reason", "value")
            )
        )
    err_console.print(table)
    err_console.print(f"The full report: GET /api/v1/dataset-imports/{detail.get('import_id')}")


def _formats_help() -> str:
    lines = "\n\n".join(f"- {fmt.value}: {files}" for fmt, files in FORMAT_FILES.items())
    return (
        "Upload data to a project as a new dataset version and print what was imported "
        "(rows, items, users, queries). Identical content returns the existing version. "
        "Rows with errors reject the whole file: the first errors are printed.\n\n"
        f"Formats and their files:\n\n{lines}"
    )


@app.command("import", help=_formats_help())
def import_(
    paths: Annotated[
        list[Path], typer.Argument(help="The file(s), or a folder holding a public format's files.")
    ],
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    format: Annotated[
        DataFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="csv, jsonl, parquet, homedepot, esci, wands, unisrec (default: from the file name).",
        ),
    ] = None,
    kind: Annotated[DatasetKind | None, typer.Option(help="What a csv/jsonl/parquet file holds.")] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of CSV files (default: detected).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Dataset name (default: the format, or the file name).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/valid/test split.")] = 42,
    valid_fraction: Annotated[float, typer.Option(help="Share of groups in the validation split.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of groups in the test split.")] = 0.1,
    locale: Annotated[str, typer.Option(help="ESCI only: the product locale to import.")] = "us",
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the new version's id, for $(...) in scripts (warnings go to stderr).",
        ),
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    settings = load_settings()
    files = _files(paths)
    fields: dict[str, str] = {
        "split_seed": str(seed),
        "valid_fraction": str(valid_fraction),
        "test_fraction": str(test_fraction),
        "locale": locale,
    }
    for field_name, value in (("format", format), ("kind", kind), ("encoding", encoding), ("name", name)):
        if value is not None:
            fields[field_name] = str(value.value if hasattr(value, "value") else value)
    with api_client(settings, url, key) as client:
        response = upload(client, project, files, fields)
    if response.status_code in (200, 201):
        result = response.json()
        if as_json:
            console.print_json(json.dumps(result))
        elif quiet:
            for warning in result.get("warnings", []):
                err_console.print(f"[yellow]warning:[/] {warning}")
            console.print(result["version_id"], highlight=False)
        else:
            print_import(result)
        return
    if response.status_code == 422:
        with contextlib.suppress(ValueError):
            _print_errors(response.json())
    response_error(response)


@app.command("list")
def list_(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The project's datasets and the full id of each one's newest version."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.get(f"/api/v1/projects/{project}/datasets", params={"limit": 200})
    if response.status_code != 200:
        response_error(response)
    table = Table("name", "kind", "versions", "latest", "rows", "latest version id")
    table.columns[5].no_wrap = True  # what `recforge jobs submit --dataset-version` takes, whole
    for item in response.json()["items"]:
        latest = item.get("latest_version") or {}
        table.add_row(
            item["name"],
            item["kind"],
            str(item["version_count"]),
            str(latest.get("version", "-")),
            f"{latest.get('row_count', 0):,}",
            latest.get("id", "-"),
        )
    console.print(table)


@app.command("stats")
def stats(
    version_id: Annotated[str, typer.Argument(help="A dataset version id.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Print a dataset version's statistics and splits as JSON."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.get(f"/api/v1/dataset-versions/{version_id}/stats")
    if response.status_code != 200:
        response_error(response)
    console.print_json(json.dumps(response.json()))


@app.command("feedback")
def feedback(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    since: Annotated[
        str | None,
        typer.Option("--from", help="The window's start, ISO 8601 (default: --days before --to)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="The window's end, ISO 8601 (default: now).")
    ] = None,
    days: Annotated[float, typer.Option(min=0.001, max=366, help="The window's length without --from.")] = 7,
    name: Annotated[
        str, typer.Option(help="The relevance dataset the rows become a version of.")
    ] = "feedback",
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="A relevance dataset version of people's judgments to merge in (they win)."
        ),
    ] = None,
    min_impressions: Annotated[
        int, typer.Option(min=1, help="Pairs shown fewer times than this are left out.")
    ] = 10,
    cart_weight: Annotated[
        float, typer.Option(min=0, help="How much more a cart counts than a click.")
    ] = 2.0,
    purchase_weight: Annotated[
        float, typer.Option(min=0, help="How much more a purchase counts than a click.")
    ] = 4.0,
    sequences: Annotated[
        bool, typer.Option("--sequences/--no-sequences", help="Also write NAME-sequences.")
    ] = True,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat-safe submission key.")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the job until it ends.")] = True,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Print only the relevance dataset version's id (for scripts)."),
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Turn what shoppers did with served results into training data: a feedback job grades each
    (query, product) pair shown in the window with a position-based click model (carts and purchases
    weigh more) and writes a new version of the relevance dataset NAME, and of NAME-sequences from each
    shopper's carts and purchases."""
    from services.cli.jobs import print_feedback, watch_job

    window: dict[str, str] = {}
    for option, value, field in (("--from", since, "from"), ("--to", until, "to")):
        if value is None:
            continue
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            fail(f"{option} {value!r} is not an ISO 8601 time, e.g. 2026-12-01 or 2026-12-01T08:00:00+00:00")
        window[field] = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).isoformat()
    if "from" not in window:
        end = dt.datetime.fromisoformat(window["to"]) if "to" in window else dt.datetime.now(dt.UTC)
        window["from"] = (end - dt.timedelta(days=days)).isoformat()
        window.setdefault("to", end.isoformat())
    body: dict[str, Any] = {
        **window,
        "name": name,
        "min_impressions": min_impressions,
        "cart_weight": cart_weight,
        "purchase_weight": purchase_weight,
        "sequences": sequences,
    }
    if base:
        body["base_dataset_version_id"] = base
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    settings = load_settings()
    with api_client(settings, url, key) as client:
        response = client.post(f"/api/v1/projects/{project}/feedback-jobs", json=body, headers=headers)
        if response.status_code != 202:
            response_error(response)
        job = response.json()
        err_console.print(f"Queued feedback job {job['id']} over {window['from']} .. {window['to']}")
        if not watch:
            console.print(job["id"])
            return
        done = watch_job(client, job["id"])
    if done["status"] != "succeeded":
        fail(f"feedback job {done['id']} {done['status']}: {done.get('error') or ''}".strip())
    result = done.get("result") or {}
    if quiet:
        relevance = [d for d in result.get("dataset_versions", []) if d["kind"] == "relevance"]
        console.print(relevance[0]["dataset_version_id"] if relevance else done["id"], highlight=False)
        return
    print_feedback(result)
