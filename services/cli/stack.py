"""Commands that run the stack: up, down, status, migrate, and each service alone."""

from __future__ import annotations

import signal
import threading
import uuid
from types import FrameType
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from services.cli import supervisor
from services.cli.console import app_error, console, database_errors, fail, load_settings
from shared.config import Settings
from shared.errors import AppError
from shared.logging import configure_logging, logging_config

READY_TIMEOUT_S = 90.0


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(migrate)
    app.command()(api)
    app.command()(inference)
    app.command()(worker)
    app.command("train-node")(train_node)


def _status_table(status: dict[str, str]) -> Table:
    table = Table(show_header=True, header_style="bold")
    table.add_column("service")
    table.add_column("state")
    for name, state in status.items():
        colour = "green" if state == "ready" else "yellow"
        table.add_row(name, f"[{colour}]{state}[/]")
    return table


def _urls(settings: Settings, running: list[supervisor.RunningService] | None = None) -> None:
    host = settings.host
    ports: dict[str, list[int]] = {}
    for service in running or []:
        ports.setdefault(service.name.split("-")[0], []).append(service.port)

    def where(service: str, port: int, suffix: str = "") -> str:
        found = ports.get(service) or [port]
        return ", ".join(f"http://{host}:{p}{suffix}" for p in found)

    console.print(f"  API        {where('api', settings.api_port)}   (docs: /docs, schema: /openapi.json)")
    console.print(f"  Console    {where('api', settings.api_port, '/ui/')}")
    console.print(
        f"  Inference  {where('inference', settings.inference_port)}   (docs: /docs, schema: /openapi.json)"
    )
    console.print(f"  Trainer    {where('trainer', settings.trainer_port, '/readyz')}")
    console.print(f"  Logs       {settings.data_dir.resolve() / 'logs'}")


def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once everything is ready.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = READY_TIMEOUT_S,
    api_replicas: Annotated[
        int, typer.Option(min=1, max=16, help="api processes (replica n on the api port + 10 x (n - 1)).")
    ] = 1,
    inference_replicas: Annotated[
        int, typer.Option(min=1, max=16, help="inference processes (on the inference port + 10 x (n - 1)).")
    ] = 1,
    workers: Annotated[
        int, typer.Option(min=1, max=16, help="trainer workers (health on the trainer port + 10 x (n - 1)).")
    ] = 1,
) -> None:
    """Start everything: embedded Postgres and Redis (unless URLs are set), migrations, then the api,
    inference and trainer processes (one of each unless told more), all on the same database, Redis and
    data directory, as replicas in a cluster are."""
    settings = load_settings()
    replicas = supervisor.Replicas(api=api_replicas, inference=inference_replicas, workers=workers)
    try:
        supervisor.service_specs(settings, replicas)
    except ValueError as exc:
        fail(str(exc))
    alive = [s.name for s in supervisor.read_services(settings) if s.process() is not None]
    if alive:
        fail(f"already running ({', '.join(alive)}); see `recforge status`, or `recforge down` first")
    with console.status("Starting PostgreSQL and Redis..."), database_errors():
        urls = supervisor.start_infra(settings)
    try:
        with console.status("Applying database migrations..."), database_errors():
            from shared import migrate as migrations

            migrations.upgrade(urls["database_url"])
    except BaseException:
        supervisor.stop_infra(settings)
        raise
    running = supervisor.spawn_services(settings, urls, replicas)
    try:
        with Live(
            _status_table({s.name: "starting" for s in running}), console=console, transient=True
        ) as live:
            not_ready = supervisor.wait_ready(
                settings, running, timeout, on_tick=lambda st: live.update(_status_table(st))
            )
    except BaseException:  # Ctrl-C while the services start: leave nothing of the stack behind
        _down(settings)
        raise
    if not_ready:
        for service in running:
            if service.name in not_ready:
                console.print(f"[red]{service.name} is not ready[/]; last lines of {service.log}:")
                console.print(_tail(service.log))
        supervisor.stop_services(settings)
        supervisor.stop_infra(settings)
        fail(f"{', '.join(not_ready)} did not become ready within {timeout:.0f} s")
    console.print("[bold green]RecForge is up.[/]")
    _urls(settings, running)
    if detach:
        console.print("Stop it with `recforge down`.")
        return
    console.print("Press Ctrl-C to stop.")
    stop = threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    while not stop.wait(1.0):
        exited = [s.name for s in running if s.process() is None]
        if exited:
            console.print(f"[red]{', '.join(exited)} exited[/]; stopping the stack.")
            break
    _down(settings)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _down(settings: Settings) -> None:
    with console.status("Stopping services..."):
        stopped = supervisor.stop_services(settings)
        stopped += supervisor.stop_infra(settings)
    console.print(f"Stopped: {', '.join(stopped) if stopped else 'nothing was running'}.")


def down() -> None:
    """Stop every process `recforge up` started (services, then the embedded servers)."""
    _down(load_settings())


def status() -> None:
    """Show the processes `recforge up` started and whether each answers /readyz."""
    settings = load_settings()
    services = supervisor.read_services(settings)
    if not services:
        console.print("Nothing started by `recforge up` is running.")
        raise typer.Exit(3)
    table = Table(show_header=True, header_style="bold")
    for column in ("service", "pid", "url", "state"):
        table.add_column(column)
    all_ready = True
    for service in services:
        if service.process() is None:
            state, all_ready = "[red]exited[/]", False
        else:
            ok, detail = supervisor.readiness(settings, service)
            all_ready &= ok
            state = f"[green]{detail}[/]" if ok else f"[yellow]{detail}[/]"
        table.add_row(service.name, str(service.pid), f"http://{settings.host}:{service.port}", state)
    console.print(table)
    from shared.config import read_embedded_state

    embedded = read_embedded_state(settings.run_dir)
    for key in ("database_url", "redis_url"):
        if key in embedded:
            console.print(f"embedded {key.split('_')[0]}: {embedded[key]}")
    raise typer.Exit(0 if all_ready else 1)


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    downgrade: Annotated[bool, typer.Option("--downgrade", help="Go down to REVISION (e.g. base).")] = False,
) -> None:
    """Apply database migrations (Alembic) to RECFORGE_DATABASE_URL or the embedded database."""
    settings = load_settings()
    from shared import migrate as migrations

    with database_errors():
        url = settings.resolved_database_url()
        if downgrade:
            migrations.downgrade(url, revision)
        else:
            migrations.upgrade(url, revision)
    console.print(f"Database at {'base' if downgrade and revision == 'base' else revision}.")


PortOption = Annotated[int | None, typer.Option(help="Port to listen on (default from settings).")]
HostOption = Annotated[str | None, typer.Option(help="Address to bind (default from settings).")]
WorkersOption = Annotated[int, typer.Option(min=1, help="Worker processes.")]


def _serve(factory: str, service: str, host: str | None, port: int, workers: int) -> None:
    import uvicorn

    settings = load_settings()
    try:
        settings.resolved_database_url()
        settings.resolved_redis_url()
    except AppError as exc:
        app_error(exc)
    uvicorn.run(
        factory,
        factory=True,
        host=host or settings.host,
        port=port,
        workers=workers,
        log_config=logging_config(settings, service),
        access_log=False,
        timeout_graceful_shutdown=15,
    )


def api(host: HostOption = None, port: PortOption = None, workers: WorkersOption = 1) -> None:
    """Run the project API alone (for containers)."""
    settings = load_settings()
    _serve("services.api.app:create_app", "api", host, port or settings.api_port, workers)


def inference(host: HostOption = None, port: PortOption = None, workers: WorkersOption = 1) -> None:
    """Run the inference service alone (for containers)."""
    settings = load_settings()
    _serve("services.inference.app:create_app", "inference", host, port or settings.inference_port, workers)


def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
) -> None:
    """Run one trainer worker (arq) on the Redis queue."""
    settings = load_settings()
    configure_logging(settings, "trainer")
    try:
        from services.trainer.worker import run

        run(settings, burst=burst)
    except AppError as exc:
        app_error(exc)


def train_node(
    job: Annotated[
        str | None, typer.Option("--job", help="Join only this job (its id); default: any multi-node job.")
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Exit after one job: 0 if its training ended well (or, with --job, it needs no more nodes).",
        ),
    ] = False,
) -> None:
    """Be one of the other machines of multi-node fine-tunes (hyperparameter nodes > 1): wait until a job's
    worker starts training, join its torchrun as the next node, and train until the run ends."""
    settings = load_settings()
    job_id = None
    if job is not None:
        try:
            job_id = uuid.UUID(job)
        except ValueError:
            fail(f"--job {job!r} is not a job id (a UUID, as `recforge jobs list` shows)")
    configure_logging(settings, "trainer")
    from services.trainer.node import serve

    with database_errors():
        code = serve(settings, job_id, once=once)
    raise typer.Exit(code)
