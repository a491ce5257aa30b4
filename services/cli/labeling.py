"""`recforge labeling` (queues of pairs to judge) and `recforge label` (judge them in a terminal)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated, Any

import click
import httpx
import typer
from rich.panel import Panel
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, get_json, get_pages, response_error
from services.cli.console import console, err_console, fail, load_settings
from shared.models.enums import AssignmentPolicy, LabelingStrategy

app = typer.Typer(
    help="Labelling queues: pairs chosen for people to judge, closed into a relevance dataset version.",
    no_args_is_help=True,
)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]


def _labellers(client: httpx.Client, project: str, given: list[str]) -> list[str]:
    """User ids of the labellers named by id or email."""
    if not any("@" in who for who in given):
        return given
    members = get_json(client, f"/api/v1/projects/{project}/members")
    by_email = {m["email"].casefold(): m["user_id"] for m in members}
    ids = []
    for who in given:
        if "@" not in who:
            ids.append(who)
        elif who.casefold() in by_email:
            ids.append(by_email[who.casefold()])
        else:
            fail(f"{who} is not a member of {project}: add them with `recforge projects members add`")
    return ids


def print_queue(queue: dict[str, Any]) -> None:
    console.print(
        f"[bold]{queue['name']}[/bold] ({queue['id']}): {queue['status']}, {queue['strategy']} over "
        f"{queue['pool']}, {queue['budget']:,} pairs, {queue['labels_per_item']} label(s) each, "
        f"grades {queue['min_grade']}..{queue['max_grade']}"
    )
    if queue.get("error"):
        err_console.print(f"[red]{queue['error']}[/red]")
    selection = (queue.get("report") or {}).get("selection")
    if selection:
        console.print(
            f"chosen from {selection['candidates']:,} candidates of {selection['queries']:,} queries "
            f"({selection['judged_left_out']:,} judged already left out); rankers: "
            f"{', '.join(selection['rankers'])} (retriever: {selection['retriever']})"
        )
    progress = queue.get("progress")
    if progress:
        table = Table(title=f"{progress['items']:,} pairs, {progress['labels_needed']:,} labels wanted")
        for column in ("labeller", "assigned", "labelled", "skipped", "waiting"):
            table.add_column(column, justify="left" if column == "labeller" else "right")
        for row in progress["by_labeller"]:
            table.add_row(
                row["name"] or row["user_id"], f"{row['assigned']:,}", f"{row['labelled']:,}",
                f"{row['skipped']:,}", f"{row['pending']:,}",
            )  # fmt: skip
        console.print(table)
    found = queue.get("agreement")
    if found and found.get("pairs_labelled_twice"):
        alpha = found.get("krippendorff_alpha")
        console.print(
            f"agreement on {found['pairs_labelled_twice']:,} pairs labelled twice: Krippendorff's alpha "
            f"{'n/a' if alpha is None else f'{alpha:.3f}'}, exact {found['exact_agreement']:.1%}"
        )
        for pair in found.get("cohen_kappa", []):
            kappa = pair["kappa"]
            console.print(
                f"  Cohen's kappa {' / '.join(pair['labellers'])}: "
                f"{'n/a' if kappa is None else f'{kappa:.3f}'} over {pair['pairs']} pairs"
            )
    if queue.get("dataset_version_id"):
        console.print(f"dataset version: {queue['dataset_version_id']}")


@app.command("create")
def create(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    name: Annotated[str, typer.Option(help="The queue's name.")],
    budget: Annotated[int, typer.Option(min=1, max=20_000, help="How many pairs to judge.")],
    strategy: Annotated[
        LabelingStrategy, typer.Option(help="random, uncertainty (needs a reranker) or committee.")
    ] = LabelingStrategy.committee,
    dataset_version: Annotated[
        str | None, typer.Option("--dataset-version", help="Pool: this relevance version's queries.")
    ] = None,
    split: Annotated[str, typer.Option(help="Pool dataset's split: train, valid, test or all.")] = "train",
    impressions: Annotated[
        bool, typer.Option("--impressions", help="Pool: what shoppers searched for in the last --days.")
    ] = False,
    days: Annotated[float, typer.Option(min=0.001, max=366, help="--impressions: the window.")] = 7,
    labeller: Annotated[
        list[str] | None,
        typer.Option("--labeller", "-l", help="A member's user id or email; repeat it (default: you)."),
    ] = None,
    labels_per_item: Annotated[int, typer.Option(min=1, max=5, help="Labellers per pair.")] = 1,
    assignment: Annotated[AssignmentPolicy, typer.Option(help="How pairs are shared.")] = (
        AssignmentPolicy.round_robin
    ),
    max_grade: Annotated[int, typer.Option(min=1, max=100, help="The top grade (0 is irrelevant).")] = 3,
    max_queries: Annotated[int, typer.Option(min=1, help="At most this many of the pool's queries.")] = 1000,
    dataset_name: Annotated[str, typer.Option(help="The relevance dataset closing writes to.")] = "labels",
    base: Annotated[
        str | None, typer.Option("--base", help="Judgments the labels join at close (not asked again).")
    ] = None,
    retriever: Annotated[
        str | None,
        typer.Option(help="A bi-encoder version to find candidates with (default: the deployed one)."),
    ] = None,
    reranker: Annotated[
        str | None,
        typer.Option(help="A cross-encoder version to score them with (default: the deployed one)."),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the selection job.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the queue's id.")] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Create a labelling queue: a selection job picks BUDGET pairs from the pool by STRATEGY and shares
    them among the labellers, who judge them with `recforge label QUEUE`."""
    from services.cli.jobs import watch_job

    if (dataset_version is None) == (not impressions):
        fail("name the pool: --dataset-version VERSION, or --impressions (with --days)")
    body: dict[str, Any] = {
        "name": name, "budget": budget, "strategy": strategy.value, "labels_per_item": labels_per_item,
        "assignment": assignment.value, "max_grade": max_grade, "max_queries": max_queries,
        "dataset_name": dataset_name,
    }  # fmt: skip
    if impressions:
        end = dt.datetime.now(dt.UTC)
        body.update(
            pool="impressions", to=end.isoformat(), **{"from": (end - dt.timedelta(days=days)).isoformat()}
        )
    else:
        body.update(pool="dataset", dataset_version_id=dataset_version, split=split)
    for field, value in (("base_dataset_version_id", base), ("retriever_version_id", retriever),
                         ("reranker_version_id", reranker)):  # fmt: skip
        if value:
            body[field] = value
    with api_client(load_settings(), url, key) as client:
        if labeller:
            body["labellers"] = _labellers(client, project, labeller)
        response = client.post(f"/api/v1/projects/{project}/labeling-queues", json=body)
        if response.status_code != 202:
            response_error(response)
        queue = response.json()
        if watch:
            job = watch_job(client, queue["selection_job_id"])
            if job["status"] != "succeeded":
                fail(f"the selection job {job['status']}: {job.get('error') or ''}")
            queue = get_json(client, f"/api/v1/labeling-queues/{queue['id']}")
    if quiet:
        print(queue["id"])
        return
    print_queue(queue)
    if queue["status"] == "open":
        console.print(f"judge its pairs with: recforge label {queue['id']}")


@app.command("list")
def list_queues(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The project's labelling queues, newest first."""
    with api_client(load_settings(), url, key) as client:
        queues = get_pages(client, f"/api/v1/projects/{project}/labeling-queues")
    table = Table()
    for column in ("id", "name", "status", "strategy", "pool", "pairs", "created"):
        table.add_column(column)
    for q in queues:
        table.add_row(
            q["id"],
            q["name"],
            q["status"],
            q["strategy"],
            q["pool"],
            f"{q['budget']:,}",
            q["created_at"][:16],
        )
    console.print(table)


@app.command("show")
def show(
    queue_id: Annotated[str, typer.Argument(help="The queue's id.")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """A queue: what its selection found, each labeller's progress and, with two labels per pair, their
    agreement."""
    with api_client(load_settings(), url, key) as client:
        print_queue(get_json(client, f"/api/v1/labeling-queues/{queue_id}"))


@app.command("close")
def close(
    queue_id: Annotated[str, typer.Argument(help="The queue's id.")],
    dataset_name: Annotated[str | None, typer.Option(help="Default: the queue's dataset name.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Judgments to merge with (labels win).")] = None,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Close the queue: its labels become a new version of a relevance dataset (train on it with
    `recforge jobs submit --dataset-version ...`)."""
    body: dict[str, Any] = {}
    if dataset_name:
        body["dataset_name"] = dataset_name
    if base:
        body["base_dataset_version_id"] = base
    with api_client(load_settings(), url, key) as client:
        response = client.post(f"/api/v1/labeling-queues/{queue_id}/close", json=body)
        if response.status_code != 200:
            response_error(response)
    print_queue(response.json())


def _key(grades: list[int]) -> str:
    """One answer: a key press on a terminal, a line otherwise (scripts, tests)."""
    prompt = f"grade {grades[0]}-{grades[-1]}, s to skip, q to quit: "
    if sys.stdin.isatty():
        console.print(prompt, end="")
        pressed = click.getchar()
        console.print(pressed)
        return pressed.strip().lower()
    console.print(prompt, end="")
    line = sys.stdin.readline()
    if not line:
        return "q"
    return line.strip().lower()


def _reason() -> str:
    console.print("why skip it? ", end="")
    line = sys.stdin.readline()
    return line.strip() or "no reason given"


def label(
    queue_id: Annotated[str, typer.Argument(help="The queue's id (`recforge labeling list -p PROJECT`).")],
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Judge the pairs a labelling queue assigned to you, one at a time: press a grade (0 irrelevant ...
    3 exact match, on the queue's scale), s to skip with a reason, q to stop (come back any time: your
    place is kept)."""
    with api_client(load_settings(), url, key) as client:
        while True:
            nxt = get_json(client, f"/api/v1/labeling-queues/{queue_id}/next")
            item = nxt["item"]
            if item is None:
                if nxt["status"] != "open":
                    fail(f"the queue is {nxt['status']}: there is nothing to label")
                console.print(f"done: you have answered all {nxt['assigned']:,} of your pairs")
                return
            grades = nxt["grades"]
            console.print(
                Panel(
                    f"[bold]query[/bold]    {item['query']}\n[bold]product[/bold]  {item['product_text']}\n"
                    f"[dim]{item['product_id']}[/dim]",
                    title=f"pair {nxt['done'] + 1:,} of {nxt['assigned']:,}",
                )
            )
            while True:
                pressed = _key(grades)
                body: dict[str, Any] | None = None
                if pressed == "q":
                    console.print(f"stopped: {nxt['done']:,} of {nxt['assigned']:,} answered")
                    return
                if pressed == "s":
                    body = {"skip": True, "reason": _reason()}
                elif pressed.isdigit() and int(pressed) in grades:
                    body = {"grade": int(pressed)}
                if body is not None:
                    break
                err_console.print(f"press a grade from {grades[0]} to {grades[-1]}, s or q")
            response = client.post(f"/api/v1/labeling-queues/{queue_id}/items/{item['id']}/label", json=body)
            if response.status_code != 200:
                response_error(response)
