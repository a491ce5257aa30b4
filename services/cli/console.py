from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console

from shared.config import Settings, get_settings
from shared.errors import AppError

# soft_wrap: lines are never broken at the terminal's (or, into a file, rich's default 80-column) width,
# so the commands, URLs and keys printed for copying paste whole; tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(f"invalid configuration: {exc}")


def app_error(exc: AppError) -> NoReturn:
    fail(exc.message)


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Turn the database failures a user can fix into one clear line."""
    from sqlalchemy.exc import DBAPIError, ProgrammingError

    try:
        yield
    except AppError as exc:
        app_error(exc)
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            fail("the database has no RecForge schema yet: run `recforge migrate` (or `recforge up`)")
        raise
    except (DBAPIError, OSError) as exc:
        fail(f"cannot reach the database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
