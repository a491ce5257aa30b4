"""`recforge webhooks`: a project's webhooks (signed JSON POSTs on pipeline events) and their
deliveries, through the API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client
from services.cli.console import console, err_console, fail, load_settings
from services.cli.pipelines import API, checked_id, confirm, expect, get, print_json, short, when
from shared.models.enums import DeliveryStatus, WebhookEvent

app = typer.Typer(
    help="Tell other systems what pipelines do: webhooks, their deliveries and test sends (through the API).",
    no_args_is_help=True,
)

EVENTS = ", ".join(event.value for event in WebhookEvent if event != WebhookEvent.test)
ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
Project = Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")]
Hook = Annotated[str, typer.Argument(metavar="HOOK", help="A webhook id.")]
HOOKS_LISTED = "recforge webhooks list -p PROJECT"
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
Events = Annotated[
    list[str] | None, typer.Option("--event", "-e", help=f"An event to receive (repeatable): {EVENTS}.")
]
Description = Annotated[str | None, typer.Option(help="What the hook is for.")]


def _hook_table(hooks: list[dict[str, Any]]) -> Table:
    table = Table("id", "url", "events", "active", "description", "created")
    table.columns[0].no_wrap = True  # ids are pasted into later commands whole
    table.columns[1].overflow = "fold"
    for hook in hooks:
        table.add_row(
            hook["id"],
            hook["url"],
            "\n".join(hook["events"]),
            "yes" if hook["active"] else "no",
            hook.get("description") or "-",
            when(hook["created_at"]),
        )
    return table


def _delivery_line(delivery: dict[str, Any]) -> str:
    answered = f"HTTP {delivery['response_status']}" if delivery.get("response_status") else "no answer"
    if delivery["status"] == DeliveryStatus.delivered:
        return f"delivered {delivery['event']} ({delivery['id']}): the receiver answered {answered}"
    attempts = f"{delivery['attempts']} attempt{'s' if delivery['attempts'] != 1 else ''}"
    return (
        f"{delivery['event']} ({delivery['id']}) {delivery['status']} after {attempts}: "
        f"{delivery.get('error') or answered}"
    )


@app.command("create")
def create(
    project: Project,
    url_: Annotated[str, typer.Option("--url", help="An http:// or https:// URL that receives the POSTs.")],
    event: Events = None,
    secret: Annotated[
        str | None,
        typer.Option(help="The signing key, 16-200 characters (default: one is generated and shown once)."),
    ] = None,
    description: Description = None,
    as_json: AsJson = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the hook's id, for $(...); the secret still shows, on stderr.",
        ),
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Subscribe a URL to events of the project; its signing secret is shown once, here.

    Each delivery is a JSON POST signed with the hook's secret (`X-RecForge-Signature: t=<unix
    seconds>,v1=<hex HMAC-SHA-256 of "<t>." + body>`), retried with backoff until the receiver answers
    2xx."""
    if not event:
        fail(f"give at least one --event: {EVENTS}")
    body: dict[str, Any] = {"url": url_, "events": event}
    if secret is not None:
        body["secret"] = secret
    if description is not None:
        body["description"] = description
    settings = load_settings()
    with api_client(settings, url, key) as client:
        hook = expect(client.post(f"{API}/projects/{project}/webhooks", json=body), 201)
    if as_json:
        print_json(hook)
        return
    if quiet:
        console.print(hook["id"], highlight=False)
        err_console.print(f"The hook's secret, shown only once: {hook['secret']}", highlight=False)
        return
    err_console.print(f"Created webhook {hook['id']}", highlight=False)
    console.print(_hook_table([hook]))
    err_console.print("Its signing secret is shown only once; store it now:")
    console.print(hook["secret"], highlight=False)


@app.command("list")
def list_(project: Project, as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None) -> None:
    """The project's webhooks, oldest first, with their full ids (never their secrets)."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        hooks = get(client, f"{API}/projects/{project}/webhooks")
    if as_json:
        print_json(hooks)
        return
    if not hooks:
        err_console.print("No webhooks yet: create one with `recforge webhooks create`.")
        return
    console.print(_hook_table(hooks))


@app.command("update")
def update(
    hook: Hook,
    active: Annotated[
        bool | None,
        typer.Option(
            "--active/--inactive",
            help="--inactive: no new deliveries, and the pending ones fail; --active: deliveries resume.",
        ),
    ] = None,
    url_: Annotated[str | None, typer.Option("--url", help="A new receiving URL.")] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event", "-e", help=f"The events to receive, replacing the list (repeatable): {EVENTS}."
        ),
    ] = None,
    description: Description = None,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Change what is given and keep the rest.

    The secret cannot change: create a new hook and delete this one."""
    hook = checked_id(hook, "webhook", HOOKS_LISTED)
    body: dict[str, Any] = {}
    for field, value in (("active", active), ("url", url_), ("events", event), ("description", description)):
        if value is not None:
            body[field] = value
    if not body:
        fail("nothing to change: give --active/--inactive, --url, --event or --description")
    settings = load_settings()
    with api_client(settings, url, key) as client:
        changed = expect(client.patch(f"{API}/webhooks/{hook}", json=body), 200)
    if as_json:
        print_json(changed)
        return
    err_console.print(f"Updated webhook {changed['id']}", highlight=False)
    console.print(_hook_table([changed]))


@app.command("delete")
def delete(
    hook: Hook,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed without a terminal).")] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Delete a webhook and its deliveries, sent or not.

    Asks first unless --yes (without a terminal, --yes is needed)."""
    hook = checked_id(hook, "webhook", HOOKS_LISTED)
    settings = load_settings()
    with api_client(settings, url, key) as client:
        found = get(client, f"{API}/webhooks/{hook}")
        confirm(f"Delete the webhook to {found['url']} ({found['id']}) and its deliveries?", yes)
        expect(client.delete(f"{API}/webhooks/{found['id']}"), 204)
    console.print(f"Deleted webhook {found['id']}", highlight=False)


@app.command("deliveries")
def deliveries(
    hook: Hook,
    status: Annotated[
        DeliveryStatus | None,
        typer.Option(help="Only deliveries in this status: pending, delivered, failed."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Show at most this many, newest first.")] = 50,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The hook's deliveries, newest first: what was sent, how often, and what the receiver answered."""
    hook = checked_id(hook, "webhook", HOOKS_LISTED)
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status.value
    settings = load_settings()
    with api_client(settings, url, key) as client:
        found = get(client, f"{API}/webhooks/{hook}/deliveries", params)
    if as_json:
        print_json(found)
        return
    if not found:
        err_console.print("No deliveries" + (f" {status.value}" if status else "") + " yet.")
        return
    table = Table("id", "event", "status", "attempts", "answer", "error", "created", "delivered")
    table.columns[0].no_wrap = True
    for delivery in found:
        table.add_row(
            delivery["id"],
            delivery["event"],
            delivery["status"],
            str(delivery["attempts"]),
            str(delivery.get("response_status") or "-"),
            short(delivery.get("error"), 50),
            when(delivery["created_at"]),
            when(delivery.get("delivered_at")),
        )
    console.print(table)


def _wait_for_attempt(
    client: httpx.Client, hook: str, delivery: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """The delivery once it has been tried (or as it is after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    with err_console.status("waiting for the first attempt"):
        while delivery["attempts"] == 0 and delivery["status"] == DeliveryStatus.pending:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
            listed = get(client, f"{API}/webhooks/{hook}/deliveries", {"limit": 200})
            delivery = next((d for d in listed if d["id"] == delivery["id"]), delivery)
    return delivery


@app.command("test")
def test(
    hook: Hook,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the first attempt (0: do not wait).")
    ] = 30.0,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Send the event `test` to the hook and wait for the first attempt's outcome.

    Sent whatever the hook subscribes to; an inactive hook is refused. Exit code 0 when the receiver
    answered 2xx, 1 when that attempt failed (it is retried, as every delivery is)."""
    hook = checked_id(hook, "webhook", HOOKS_LISTED)
    settings = load_settings()
    with api_client(settings, url, key) as client:
        delivery = expect(client.post(f"{API}/webhooks/{hook}/test"), 202)
        if timeout > 0:
            delivery = _wait_for_attempt(client, hook, delivery, timeout)
    if as_json:
        print_json(delivery)
        return
    if delivery["attempts"] == 0 and delivery["status"] == DeliveryStatus.pending:
        waited = f"not tried within {timeout:g} s" if timeout > 0 else "queued"
        console.print(
            f"Test delivery {delivery['id']} {waited}; `recforge webhooks deliveries {hook}` shows its "
            "outcome (the API sends deliveries while RECFORGE_PIPELINE_CONTROLLER is on)",
            highlight=False,
        )
        return
    if delivery["status"] != DeliveryStatus.delivered:
        fail(_delivery_line(delivery))
    console.print(_delivery_line(delivery), highlight=False)
