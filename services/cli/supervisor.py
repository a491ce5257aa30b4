"""`recforge up` / `down` / `status`: start the stack as child processes, track them, stop them all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from services.cli import embedded
from shared.config import Settings, read_embedded_state, to_async_url

STOP_TIMEOUT_S = 20.0
REPLICA_PORT_STEP = 10  # replica n of a service listens on the first one's port + 10 x (n - 1)


@dataclass
class ServiceSpec:
    name: str
    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replicas:
    """How many processes of each service `recforge up` runs, all on the same database, Redis and data
    directory: api replicas (each runs the loop's controller too: its ticks fire once whatever the
    count), inference replicas and trainer workers."""

    api: int = 1
    inference: int = 1
    workers: int = 1


@dataclass
class RunningService:
    name: str
    pid: int
    create_time: float
    port: int
    log: str

    def process(self) -> psutil.Process | None:
        """The process, unless it exited (or its pid now belongs to another process)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None


def services_state_path(settings: Settings) -> Path:
    return settings.run_dir / "services.json"


def read_services(settings: Settings) -> list[RunningService]:
    path = services_state_path(settings)
    if not path.exists():
        return []
    try:
        return [RunningService(**item) for item in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def service_specs(settings: Settings, replicas: Replicas | None = None) -> list[ServiceSpec]:
    """The processes to run: the first of each service keeps its name and port (api, inference,
    trainer); replica n is `<service>-n` on the first's port + REPLICA_PORT_STEP x (n - 1)."""
    replicas = replicas or Replicas()
    cli = [sys.executable, "-m", "services.cli"]
    specs: list[ServiceSpec] = []
    for service, command, count, port in (
        ("api", "api", replicas.api, settings.api_port),
        ("inference", "inference", replicas.inference, settings.inference_port),
        ("trainer", "worker", replicas.workers, settings.trainer_port),
    ):
        for index in range(count):
            name = service if index == 0 else f"{service}-{index + 1}"
            at = port + REPLICA_PORT_STEP * index if port else 0
            if command == "worker":  # the worker's health port comes from its settings
                specs.append(ServiceSpec(name, [*cli, command], at, {"RECFORGE_TRAINER_PORT": str(at)}))
            else:
                specs.append(ServiceSpec(name, [*cli, command, "--port", str(at)], at))
    ports = [spec.port for spec in specs if spec.port]
    if len(set(ports)) != len(ports) or max(ports, default=0) > 65535:
        raise ValueError(
            f"the replicas' ports collide or pass 65535 ({sorted(ports)}): choose api, inference and trainer "
            f"ports that are not {REPLICA_PORT_STEP} apart, or fewer replicas"
        )
    return specs


def start_infra(settings: Settings) -> dict[str, str]:
    """Start the embedded servers for whatever is not configured; return the URLs to use."""
    data_dir = settings.data_dir.resolve()
    state: dict[str, Any] = {}
    database_url = settings.database_url
    if not database_url:
        database_url = embedded.start_postgres(data_dir)
        state["database_url"] = database_url
        state["postgres_dir"] = str(data_dir / "postgres")
    redis_url = settings.redis_url
    if not redis_url:
        redis_url = embedded.start_redis(data_dir)
        state["redis_url"] = redis_url
    if state:
        embedded.write_json(embedded.infra_state_path(settings.run_dir), state)
    return {"database_url": to_async_url(database_url), "redis_url": redis_url}


def spawn_services(
    settings: Settings, urls: dict[str, str], replicas: Replicas | None = None
) -> list[RunningService]:
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        RECFORGE_DATABASE_URL=urls["database_url"],
        RECFORGE_REDIS_URL=urls["redis_url"],
        RECFORGE_DATA_DIR=str(data_dir),
        RECFORGE_HOST=settings.host,
        RECFORGE_API_PORT=str(settings.api_port),
        RECFORGE_INFERENCE_PORT=str(settings.inference_port),
        RECFORGE_TRAINER_PORT=str(settings.trainer_port),
    )
    running: list[RunningService] = []
    for spec in service_specs(settings, replicas):
        log_path = log_dir / f"{spec.name}.log"
        own: dict[str, str] = {}
        if settings.on_bucket and settings.local_cache_dir is None:  # a cache of its own, as a pod has
            own["RECFORGE_LOCAL_CACHE_DIR"] = str(data_dir / "cache" / spec.name)
        with open(log_path, "ab") as log_file:
            # A session of its own: Ctrl-C in the terminal reaches `up`, which stops the children in order.
            proc = subprocess.Popen(
                spec.args,
                env={**env, **own, **spec.env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running.append(
            RunningService(
                name=spec.name,
                pid=proc.pid,
                create_time=psutil.Process(proc.pid).create_time(),
                port=spec.port,
                log=str(log_path),
            )
        )
    embedded.write_json(services_state_path(settings), [asdict(s) for s in running])  # type: ignore[arg-type]
    return running


def readiness(settings: Settings, service: RunningService, timeout: float = 2.0) -> tuple[bool, str]:
    url = f"http://{settings.host}:{service.port}/readyz"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    if response.status_code == 200:
        return True, "ready"
    return False, f"HTTP {response.status_code}"


def wait_ready(
    settings: Settings,
    services: list[RunningService],
    timeout: float,
    on_tick: Callable[[dict[str, str]], None] | None = None,
) -> list[str]:
    """Wait until every service answers /readyz 200. Returns the names of those that did not."""
    pending = {s.name: s for s in services}
    status: dict[str, str] = {s.name: "starting" for s in services}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, service in list(pending.items()):
            if service.process() is None:
                status[name] = "exited"
                return [name]
            ok, detail = readiness(settings, service, timeout=1.0)
            status[name] = detail
            if ok:
                del pending[name]
        if on_tick:
            on_tick(status)
        if pending:
            time.sleep(0.3)
    return list(pending)


def stop_services(settings: Settings) -> list[str]:
    """SIGTERM every service's process group, wait, then SIGKILL what is left."""
    stopped: list[str] = []
    procs: list[tuple[RunningService, psutil.Process]] = []
    for service in read_services(settings):
        proc = service.process()
        if proc is None:
            continue
        procs.append((service, proc))
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for service, proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        stopped.append(service.name)
    # Anything a service spawned in its group (uvicorn workers, tokenizer pools) goes with it.
    for _, proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    services_state_path(settings).unlink(missing_ok=True)
    return stopped


def stop_infra(settings: Settings) -> list[str]:
    state = read_embedded_state(settings.run_dir)
    data_dir = settings.data_dir.resolve()
    stopped = []
    if state.get("redis_url") and embedded.stop_redis(data_dir):
        stopped.append("redis")
    if state.get("database_url") and embedded.stop_postgres(data_dir):
        stopped.append("postgres")
    embedded.infra_state_path(settings.run_dir).unlink(missing_ok=True)
    return stopped
