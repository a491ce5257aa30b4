"""`recforge keys`: issue API keys from the command line (the way to get the first admin key)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from services.cli.console import console, database_errors, err_console, load_settings
from shared.config import Settings
from shared.models.enums import KeyRole

app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@app.command("create")
def create(
    role: Annotated[KeyRole, typer.Option(help="admin (global), user, or service (needs --project).")] = (
        KeyRole.user
    ),
    email: Annotated[str, typer.Option(help="The key's user; created if unknown.")] = "admin@recforge.local",
    user_name: Annotated[str, typer.Option("--user-name", help="Name for a new user.")] = "Administrator",
    name: Annotated[str, typer.Option(help="A label for the key.")] = "cli",
    project: Annotated[str | None, typer.Option(help="Project id or slug (service keys).")] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Expire after this many days (default: never).")
    ] = None,
) -> None:
    """Create an API key and print it. It is shown once: store it now."""
    settings = load_settings()
    with database_errors():
        key = issue(settings, role, email=email, user_name=user_name, name=name, project=project,
                    expires_in_days=expires_in_days)  # fmt: skip
    err_console.print(f"Created a key with role [bold]{role.value}[/] for {email}. It is shown only once:")
    console.print(key, soft_wrap=True, highlight=False)


def issue(
    settings: Settings,
    role: KeyRole,
    *,
    email: str,
    user_name: str,
    name: str,
    project: str | None = None,
    expires_in_days: int | None = None,
) -> str:
    """Issue a key straight in the database (the way to the first admin key); return its secret."""

    async def run() -> str:
        from services.api.auth.service import ensure_user, issue_key
        from shared.db import create_engine, create_sessionmaker, unit_of_work
        from shared.errors import NotFound
        from shared.projects import project_by_ref

        engine = create_engine(settings, pool_size=1)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                project_id = None
                if project:
                    found = await project_by_ref(session, project)
                    if found is None:
                        raise NotFound(f"no project {project!r}")
                    project_id = found.id
                user = await ensure_user(session, name=user_name, email=email)
                expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
                issued = await issue_key(
                    session,
                    user=user,
                    secret=settings.secret_key.get_secret_value(),
                    name=name,
                    role=role,
                    project_id=project_id,
                    expires_at=expires_at,
                )
                return issued.key
        finally:
            await engine.dispose()

    return asyncio.run(run())
