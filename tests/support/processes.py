"""Running RecForge as a user does: `recforge` in a subprocess, services on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.config import Settings

CLI = [sys.executable, "-m", "services.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recforge(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a user whose RECFORGE_ settings point at the test database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECFORGE_")}
    env.update(
        RECFORGE_DATABASE_URL=settings.resolved_database_url(),
        RECFORGE_REDIS_URL=settings.resolved_redis_url(),
        RECFORGE_DATA_DIR=str(settings.data_dir),
        RECFORGE_MODEL_ROOTS=settings.model_roots,
        COLUMNS="200",
    )
    env.update(extra)
    return env


def stack_env(data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment of a user with nothing configured, on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECFORGE_")}
    ports = {"api": free_port(), "inference": free_port(), "trainer": free_port()}
    env.update(
        RECFORGE_DATA_DIR=str(data_dir),
        RECFORGE_MODEL_ROOTS=str(data_dir.parent),  # where tests keep the tiny models they train from
        RECFORGE_API_PORT=str(ports["api"]),
        RECFORGE_INFERENCE_PORT=str(ports["inference"]),
        RECFORGE_TRAINER_PORT=str(ports["trainer"]),
        COLUMNS="200",
    )
    return env, ports


def wait_ready(url: str, process: subprocess.Popen[str] | None = None, timeout: float = 60) -> bool:
    """Whether ``url``/readyz answers 200 within ``timeout`` s; AssertionError if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.2)
    return False


def free_port_run(width: int) -> int:
    """A port p with p .. p + width all free now: room for replicas on consecutive ports."""
    import socket

    for _ in range(50):
        base = free_port()
        if base + width > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + width + 1):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no run of free ports found")
