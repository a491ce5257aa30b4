"""A small HTTP client for CLI commands that talk to a running RecForge API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import httpx

from services.cli.console import err_console, fail
from shared.config import Settings

API_URL_HELP = "Base URL of the RecForge API (env: RECFORGE_API_URL; default: http://HOST:API_PORT)."
API_KEY_HELP = "An API key (env: RECFORGE_API_KEY); `recforge keys create` makes one."


def api_url(settings: Settings, given: str | None) -> str:
    url = given or os.environ.get("RECFORGE_API_URL") or f"http://{settings.host}:{settings.api_port}"
    return url.rstrip("/")


def api_key(given: str | None) -> str:
    key = given or os.environ.get("RECFORGE_API_KEY")
    if not key:
        fail("no API key: pass --api-key or set RECFORGE_API_KEY (create one with `recforge keys create`)")
    return key


@contextmanager
def api_client(settings: Settings, url: str | None, key: str | None) -> Iterator[httpx.Client]:
    base = api_url(settings, url)
    headers = {"Authorization": f"Bearer {api_key(key)}"}
    timeout = httpx.Timeout(30.0, read=900.0, write=900.0)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
            yield client
    except httpx.ConnectError:
        fail(f"cannot reach the API at {base}: is it running? (`recforge up`, or set RECFORGE_API_URL)")
    except httpx.TimeoutException:
        fail(f"the API at {base} did not answer in time")


def response_error(response: httpx.Response) -> NoReturn:
    """Print the API's error body (message and detail) and exit with status 1."""
    try:
        body: Any = response.json()
    except ValueError:
        fail(f"HTTP {response.status_code}: {response.text[:500]}")
    message = body.get("message") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        for item in detail[:20]:
            # an item that only repeats the message (a whole-request problem) is not printed again
            if isinstance(item, dict) and item.get("msg") != message:
                loc = ".".join(str(p) for p in item.get("loc", []))
                err_console.print(f"  {loc}: {item.get('msg')}")
    fail(f"HTTP {response.status_code}: {message or body}")


def get_pages(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every item of a paginated list (``items`` and ``next_cursor``), page after page."""
    query: dict[str, Any] = {"limit": 200, **(params or {})}
    items: list[dict[str, Any]] = []
    while True:
        response = client.get(path, params=query)
        if response.status_code != 200:
            response_error(response)
        page = response.json()
        items += page["items"]
        if not page.get("next_cursor"):
            return items
        query["cursor"] = page["next_cursor"]


def get_json(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    """The JSON of a GET that must answer 200 (else the API's error, and exit 1)."""
    response = client.get(path, params=params)
    if response.status_code != 200:
        response_error(response)
    return response.json()
