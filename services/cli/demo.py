"""`recforge demo`: the walk-through from data to /recommend on a running stack (`make demo` runs it)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli.client import api_url
from services.cli.console import console, database_errors, fail, load_settings
from shared.config import Settings
from shared.errors import AppError
from shared.models.enums import KeyRole

DEMO_KEY_DAYS = 7  # the demo's admin key is for trying things out: it does not live forever


def demo_key(settings: Settings) -> str:
    """An admin key for the walk-through (and a while after it), which expires."""
    from services.cli.keys import issue

    return issue(
        settings,
        KeyRole.admin,
        email="demo@recforge.local",
        user_name="Demo admin",
        name="demo",
        expires_in_days=DEMO_KEY_DAYS,
    )


def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            envvar="RECFORGE_DEMO_DATA",
            help="Real data instead of the sample shop: a Home Depot train CSV, an ESCI or a WANDS folder.",
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps of the bi-encoder.")] = 150,
    cross_steps: Annotated[int, typer.Option(min=1, help="Optimiser steps of the cross-encoder.")] = 300,
    base_model: Annotated[
        str | None, typer.Option(help="The model to fine-tune: a local folder or hub id (default MiniLM).")
    ] = None,
    products: Annotated[int, typer.Option(min=20, help="Products in the sample shop.")] = 2000,
    queries: Annotated[int, typer.Option(min=10, help="Queries in the sample shop.")] = 1000,
    slug: Annotated[str, typer.Option(help="The project's slug (a number is added if it is taken).")] = (
        "demo-shop"
    ),
    query: Annotated[
        list[str] | None, typer.Option("--query", help="A query to send to /recommend (repeatable).")
    ] = None,
    api: Annotated[str | None, typer.Option("--api-url", help="The API's base URL.")] = None,
    inference: Annotated[
        str | None, typer.Option("--inference-url", help="The inference service's base URL.")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="RECFORGE_API_KEY",
            help="An API key of an admin or project creator. Default: a new admin key.",
        ),
    ] = None,
) -> None:
    """Walk one project from data to /recommend through the public APIs of a running stack
    (`recforge up`): staff it, import data, fine-tune a bi-encoder and a cross-encoder with progress
    bars, compare them with BM25 and zero-shot, promote the best, and ask /recommend."""
    from services.cli.walkthrough import DemoOptions, Walkthrough

    settings = load_settings()
    if key is None:
        with database_errors():
            key = demo_key(settings)
        console.print(
            f"Created an admin key for demo@recforge.local, valid {DEMO_KEY_DAYS} days (printed at the end)."
        )
    inference_url = inference or os.environ.get(
        "RECFORGE_INFERENCE_URL", f"http://{settings.host}:{settings.inference_port}"
    )
    options = DemoOptions(
        api_url=api_url(settings, api),
        inference_url=inference_url.rstrip("/"),
        api_key=key,
        work_dir=settings.data_dir.resolve() / "demo",
        data=data,
        base_model=base_model,
        steps=steps,
        cross_steps=cross_steps,
        products=products,
        queries=queries,
        slug=slug,
        recommend_queries=tuple(query or ()),
    )
    started = time.monotonic()
    try:
        Walkthrough(options, console).run()
    except AppError as exc:
        fail(exc.message)
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    console.print(f"\n[bold green]Demo done in {minutes} min {seconds} s.[/]")
    if not os.environ.get("RECFORGE_API_KEY"):
        console.print(f"  export RECFORGE_API_KEY={key}   # the demo's admin key, for `recforge` and the API")
