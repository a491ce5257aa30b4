"""`recforge projects`: a project's life from the command line, against a running API."""

from __future__ import annotations

import re

from shared.config import Settings
from tests.support.processes import cli_env, recforge


def _env(settings: Settings, api_server: str) -> dict[str, str]:
    made = recforge("keys", "create", "--role", "admin", env=cli_env(settings))
    assert made.returncode == 0, made.stderr
    return cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=made.stdout.strip())


def test_create_list_show_and_update_a_project(settings: Settings, api_server: str) -> None:
    env = _env(settings, api_server)
    created = recforge("projects", "create", "shop-search", "--name", "Shop search", env=env)
    assert created.returncode == 0, created.stderr
    assert "Created project shop-search" in created.stderr
    assert re.search(r"CPU-hours\s+0\.00 of 10\.00 used", created.stdout)  # the default budget

    listed = recforge("projects", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listed.stdout)
    assert len(ids) == 1  # whole, never cut to fit the terminal

    gpu = recforge("projects", "update", ids[0], "--gpu-hours", "2", env=env)
    assert gpu.returncode == 0, gpu.stderr
    raised = recforge("projects", "update", "shop-search", "--cpu-hours", "20", "--status", "paused", env=env)
    assert raised.returncode == 0, raised.stderr
    shown = recforge("projects", "show", "shop-search", env=env)
    assert re.search(r"CPU-hours\s+0\.00 of 20\.00 used", shown.stdout)
    assert re.search(r"GPU-hours\s+0\.00 of 2\.00 used", shown.stdout)  # kept: not named in the update
    assert re.search(r"status\s+paused", shown.stdout)


def test_project_commands_say_what_is_wrong(settings: Settings, api_server: str) -> None:
    env = _env(settings, api_server)
    bad = recforge("projects", "create", "Shop_Search", env=env)
    assert bad.returncode == 1
    assert "a slug is lowercase letters, digits and dashes, 2-63 characters" in bad.stderr
    nothing = recforge("projects", "update", "anything", env=env)
    assert nothing.returncode == 1 and "nothing to change" in nothing.stderr
    unknown = recforge("projects", "show", "no-such-project", env=env)
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr
