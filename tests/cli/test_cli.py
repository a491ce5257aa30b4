"""The `recforge` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings
from shared.models import ApiKey, AuditLog
from shared.security import hash_api_key
from tests.support.processes import cli_env, recforge

COMMANDS = [[], ["up"], ["down"], ["status"], ["migrate"], ["api"], ["inference"], ["worker"], ["train-node"], ["keys"],
            ["keys", "create"], ["data"], ["data", "import"], ["data", "list"], ["data", "stats"], ["data", "feedback"], ["simulate"],
            ["jobs"], ["jobs", "submit"], ["jobs", "watch"], ["jobs", "cancel"], ["projects"],
            ["projects", "create"], ["projects", "list"], ["projects", "show"], ["projects", "update"],
            ["jobs", "list"], ["models"], ["models", "list"], ["models", "show"], ["models", "promote"],
            ["deployments"], ["deployments", "list"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "recforge")
def test_every_command_has_help(command: list[str]) -> None:
    result = recforge(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


async def test_keys_create_admin_prints_a_key_once_and_stores_its_hash(
    settings: Settings, session: AsyncSession
) -> None:
    result = recforge("keys", "create", "--role", "admin", env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("rf_") and len(key) > 40
    assert "shown only once" in result.stderr

    stored = (await session.execute(select(ApiKey))).scalar_one()
    assert stored.role == "admin"
    assert stored.key_hash == hash_api_key(key, settings.secret_key.get_secret_value())
    assert key not in (stored.key_hash, stored.key_prefix)
    audit = (await session.execute(select(AuditLog))).scalar_one()
    assert audit.action == "api_key.create" and audit.entity_id == str(stored.id)


async def test_service_key_without_project_is_refused_and_nothing_is_written(
    settings: Settings, session: AsyncSession
) -> None:
    result = recforge("keys", "create", "--role", "service", env=cli_env(settings))
    assert result.returncode == 1
    assert (
        "a service key belongs to one project: name it (project_id in the API, --project in recforge keys create)"
        in result.stderr
    )
    assert (await session.execute(select(ApiKey))).first() is None


def test_unknown_project_is_a_clear_error(settings: Settings, db: object) -> None:
    result = recforge("keys", "create", "--role", "service", "--project", "nope", env=cli_env(settings))
    assert result.returncode == 1
    assert "no project 'nope'" in result.stderr


def test_unmigrated_database_says_what_to_do(settings: Settings, scratch_database: str) -> None:
    env = cli_env(settings, RECFORGE_DATABASE_URL=scratch_database)
    result = recforge("keys", "create", "--role", "admin", env=env)
    assert result.returncode == 1
    assert "recforge migrate" in result.stderr


def test_unreachable_database_is_a_clear_error(settings: Settings, tmp_path: object) -> None:
    env = cli_env(settings, RECFORGE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    result = recforge("keys", "create", env=env)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_migrate_command_goes_down_and_up(settings: Settings, scratch_database: str) -> None:
    env = cli_env(settings, RECFORGE_DATABASE_URL=scratch_database)
    assert recforge("migrate", env=env).returncode == 0
    down = recforge("migrate", "base", "--downgrade", env=env)
    assert down.returncode == 0, down.stderr
    assert recforge("migrate", env=env).returncode == 0


async def test_the_demos_admin_key_expires(settings: Settings, session: AsyncSession) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    from services.cli.demo import DEMO_KEY_DAYS, demo_key

    await asyncio.to_thread(demo_key, settings)
    stored = (await session.execute(select(ApiKey))).scalar_one()
    assert stored.role == "admin" and stored.expires_at is not None
    assert abs(stored.expires_at - (datetime.now(UTC) + timedelta(days=DEMO_KEY_DAYS))) < timedelta(minutes=5)
