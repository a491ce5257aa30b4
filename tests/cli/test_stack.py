"""`recforge up --detach` with nothing configured brings the whole stack up on embedded Postgres and
Redis; `recforge down` leaves no process of it behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import free_port_run, stack_env, wait_ready

pytestmark = pytest.mark.slow


def _processes_mentioning(fragment: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.info.get("environ") or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if fragment in cmdline or fragment in env.get("RECFORGE_DATA_DIR", ""):
            found.append(proc)
    return found


def test_up_detach_then_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    env, ports = stack_env(data_dir)
    cli = [sys.executable, "-m", "services.cli"]
    try:
        started = time.monotonic()
        up = subprocess.run([*cli, "up", "--detach"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("api", "inference"):
            ready = httpx.get(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
            assert httpx.get(f"http://127.0.0.1:{ports[name]}/openapi.json", timeout=5).status_code == 200
        assert time.monotonic() - started < 60

        infra = json.loads((data_dir / "run" / "infra.json").read_text())
        assert "host=" in infra["database_url"] and infra["redis_url"].startswith("unix://")
        services = json.loads((data_dir / "run" / "services.json").read_text())
        pids = [s["pid"] for s in services]
        assert len(pids) == 3

        # The CLI's admin key works against the running API (the embedded database is found by itself).
        key = subprocess.run(
            [*cli, "keys", "create", "--role", "admin"], env=env, capture_output=True, text=True, timeout=60
        )
        assert key.returncode == 0, key.stderr
        headers = {"Authorization": f"Bearer {key.stdout.strip()}"}
        api = f"http://127.0.0.1:{ports['api']}/api/v1"
        created = httpx.post(
            f"{api}/projects", json={"slug": "tools", "name": "Tools"}, headers=headers, timeout=10
        )
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{api}/projects", headers=headers, timeout=10).json()
        assert [p["slug"] for p in listed["items"]] == ["tools"]

        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout
        again = subprocess.run([*cli, "up", "--detach"], env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "postgres" in down.stdout and "redis" in down.stdout
    time.sleep(0.5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert _processes_mentioning(str(data_dir)) == []


def test_foreground_up_stops_everything_on_sigint(tmp_path: Path) -> None:
    """`recforge up` without --detach: Ctrl-C stops the services with SIGTERM, each shutting down
    cleanly, then the embedded servers."""
    import signal

    data_dir = tmp_path / "fg"
    env, ports = stack_env(data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if not wait_ready(f"http://127.0.0.1:{ports['api']}"):
            pytest.fail("the stack did not become ready")
        time.sleep(1.0)  # let `up` reach its wait loop
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([sys.executable, "-m", "services.cli", "down"], env=env, timeout=60)
    assert proc.returncode == 0, output
    assert "Stopped: api, inference, trainer, redis, postgres." in output
    logs = data_dir / "logs"
    assert "Application shutdown complete" in (logs / "api.log").read_text()
    assert "Application shutdown complete" in (logs / "inference.log").read_text()
    assert "trainer worker stopped" in (logs / "trainer.log").read_text()
    assert _processes_mentioning(str(data_dir)) == []


def test_ctrl_c_while_the_services_start_leaves_nothing_behind(tmp_path: Path) -> None:
    import signal

    data_dir = tmp_path / "early"
    env, _ = stack_env(data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = data_dir / "run" / "services.json"
        # `up` starts the embedded servers and migrates first: on a loaded machine that takes a while
        deadline = time.monotonic() + 120
        while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if not state.exists():
            proc.kill()
            said = proc.communicate(timeout=30)[0]
            raise AssertionError(
                f"the services were not started (exit code {proc.returncode}): {said[-3000:]}"
            )
        pids = [s["pid"] for s in json.loads(state.read_text())]
        proc.send_signal(signal.SIGINT)  # before they are ready: `up` is still waiting for them
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([sys.executable, "-m", "services.cli", "down"], env=env, timeout=60)
    assert "Stopped: api, inference, trainer" in output, output
    time.sleep(0.5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert _processes_mentioning(str(data_dir)) == []


def test_up_runs_replicas_of_each_service_on_one_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    env, _ = stack_env(data_dir)
    base = free_port_run(12)
    env.update(
        RECFORGE_API_PORT=str(base),
        RECFORGE_INFERENCE_PORT=str(base + 1),
        RECFORGE_TRAINER_PORT=str(base + 2),
    )
    cli = [sys.executable, "-m", "services.cli"]
    collide = subprocess.run(
        [*cli, "up", "--detach", "--api-replicas", "2"],
        env={**env, "RECFORGE_INFERENCE_PORT": str(base + 10)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert collide.returncode == 1 and "collide" in collide.stderr
    try:
        up = subprocess.run(
            [*cli, "up", "--detach", "--api-replicas", "2", "--inference-replicas", "2", "--workers", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{base}, http://127.0.0.1:{base + 10}" in up.stdout
        services = {s["name"]: s for s in json.loads((data_dir / "run" / "services.json").read_text())}
        assert set(services) == {"api", "api-2", "inference", "inference-2", "trainer", "trainer-2"}
        assert services["api-2"]["port"] == base + 10 and services["trainer-2"]["port"] == base + 12
        pids = [s["pid"] for s in services.values()]
        for service in services.values():
            ready = httpx.get(f"http://127.0.0.1:{service['port']}/readyz", timeout=5)
            assert ready.status_code == 200, (service["name"], ready.text)

        key = subprocess.run(
            [*cli, "keys", "create", "--role", "admin"], env=env, capture_output=True, text=True, timeout=60
        )
        headers = {"Authorization": f"Bearer {key.stdout.strip()}"}
        made = httpx.post(
            f"http://127.0.0.1:{base + 10}/api/v1/projects",
            json={"slug": "tools", "name": "Tools"},
            headers=headers,
            timeout=10,
        )
        assert made.status_code == 201, made.text
        seen = httpx.get(f"http://127.0.0.1:{base}/api/v1/projects/tools", headers=headers, timeout=10)
        assert seen.status_code == 200  # one database behind both replicas
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "trainer-2" in status.stdout, status.stdout
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=90)
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
