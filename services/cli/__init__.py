"""The ``recforge`` command line."""

from __future__ import annotations

import typer

from services.cli import (
    data,
    demo,
    jobs,
    keys,
    labeling,
    models,
    pipelines,
    projects,
    simulator,
    stack,
    webhooks,
)

app = typer.Typer(
    name="recforge",
    help="RecForge: run transformer search & recommendation projects end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stack.register(app)
app.add_typer(keys.app, name="keys")
app.add_typer(projects.app, name="projects")
app.add_typer(data.app, name="data")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.add_typer(models.deployments_app, name="deployments")
app.add_typer(pipelines.app, name="pipelines")
app.add_typer(labeling.app, name="labeling")
app.command("label")(labeling.label)
app.add_typer(webhooks.app, name="webhooks")
app.command()(demo.demo)
app.command("simulate")(simulator.simulate_command)


def main() -> None:
    app()
