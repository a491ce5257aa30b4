"""A whole RecForge stack in real processes (`recforge up --detach` on embedded PostgreSQL and Redis of
its own), and the faults a test injects into it from outside: SIGKILL of the worker, PostgreSQL or
Redis stopped and started again."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from services.cli import embedded
from tests.support.processes import CLI, free_port, free_port_run, stack_env
from tests.support.world import bearer

# Quick clocks so faults are noticed within seconds: a silent worker is presumed dead after 10 s (a
# busy two-core machine can stall a live one for several), a job the queue lost is enqueued again
# after 3 s, deployments are re-read every 2 s.
FAST = {
    "RECFORGE_JOB_HEARTBEAT_TIMEOUT_S": "10",
    "RECFORGE_PROGRESS_INTERVAL_S": "0.5",
    "RECFORGE_CHECKPOINT_INTERVAL_S": "1",
    "RECFORGE_LOST_JOB_AFTER_S": "3",
    "RECFORGE_DEPLOYMENT_REFRESH_S": "2",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


REPLICA_ROOM = 42  # ports for up to 4 replicas of each service


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    admin: str = ""
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "stack"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    # -- the stack ----------------------------------------------------------------------------------

    def up(self, *args: str, **extra_env: str) -> Stack:
        """`recforge up --detach` with ``args`` (replicas: ``--api-replicas 2`` ...); replica n of a
        service is on its first port + 10 x (n - 1), so the ports are picked as one free run."""
        self.env, self.ports = stack_env(self.data_dir)
        if args:
            base = free_port_run(REPLICA_ROOM)
            self.ports = {"api": base, "inference": base + 1, "trainer": base + 2}
            self.env.update(
                RECFORGE_API_PORT=str(base),
                RECFORGE_INFERENCE_PORT=str(base + 1),
                RECFORGE_TRAINER_PORT=str(base + 2),
            )
        self.env.update(FAST, **extra_env)
        started = subprocess.run(
            [*CLI, "up", "--detach", *args], env=self.env, capture_output=True, text=True, timeout=240
        )
        assert started.returncode == 0, started.stdout + started.stderr
        key = subprocess.run(
            [*CLI, "keys", "create", "--role", "admin"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert key.returncode == 0, key.stderr
        self.admin = key.stdout.strip()
        return self

    def down(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        subprocess.run([*CLI, "down"], env=self.env, capture_output=True, timeout=120)

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, name: str) -> int:
        services = json.loads((self.data_dir / "run" / "services.json").read_text())
        return int(next(s["pid"] for s in services if s["name"] == name))

    # -- calls ----------------------------------------------------------------------------------------

    def api(self, method: str, path: str, expect: int | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(self.admin), **kwargs.pop("headers", {})}
        response = httpx.request(
            method, f"{self.api_url}/api/v1{path}", headers=headers, timeout=30, **kwargs
        )
        if expect is not None:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def inference(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.inference_url}{path}", headers=bearer(key), timeout=30, **kwargs)

    def upload(self, project: str, name: str, body: str, kind: str) -> str:
        response = self.api(
            "POST",
            f"/projects/{project}/datasets",
            expect=201,
            files=[("file", (name, io.BytesIO(body.encode())))],
            data={"kind": kind},
        )
        return str(response.json()["version_id"])

    def submit(self, project: str, **body: Any) -> dict[str, Any]:
        return dict(self.api("POST", f"/projects/{project}/training-jobs", expect=202, json=body).json())

    def fine_tune(
        self, project: str, base_model: Path, dataset: str, steps: int, **hyperparameters: Any
    ) -> dict[str, Any]:
        """A bi-encoder fine-tune of exactly ``steps`` small steps (epochs repeat as needed)."""
        return self.submit(
            project,
            job_type="bi_encoder",
            dataset_version_id=dataset,
            base_model=str(base_model),
            hyperparameters={"epochs": 100, "max_steps": steps, "batch_size": 16, "max_length": 32}
            | hyperparameters,
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/training-jobs/{job_id}", expect=200).json())

    def wait_job(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        return dict(wait_for(f"job {job_id} to end", ended, timeout, every=0.5))

    def service_key(self, project: str) -> str:
        me = self.api("GET", "/users/me", expect=200).json()
        body = {"user_id": me["id"], "name": "storefront", "role": "service", "project_id": project}
        return str(self.api("POST", "/keys", expect=201, json=body).json()["key"])

    # -- the database, read directly -------------------------------------------------------------------

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        import asyncpg

        state = json.loads((self.data_dir / "run" / "infra.json").read_text())
        dsn = state["database_url"]

        async def run() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(dsn)
            try:
                return [dict(row) for row in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    # -- faults ---------------------------------------------------------------------------------------

    def kill(self, pid: int) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost node would: nothing runs after it."""
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(10)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """One more `recforge worker`, as a replacement pod would be; stopped by ``down``."""
        log = open(self.data_dir / "logs" / f"worker-{len(self.workers) + 1}.log", "ab")  # noqa: SIM115
        env = {
            **self.env,
            "RECFORGE_DATABASE_URL": self._infra()["database_url"],
            "RECFORGE_REDIS_URL": self._infra()["redis_url"],
            "RECFORGE_TRAINER_PORT": str(free_port()),
        }
        worker = subprocess.Popen([*CLI, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.workers.append(worker)
        return worker

    def _infra(self) -> dict[str, str]:
        return dict(json.loads((self.data_dir / "run" / "infra.json").read_text()))

    def stop_postgres(self) -> None:
        assert embedded.stop_postgres(self.data_dir.resolve())

    def start_postgres(self) -> None:
        # in a process of its own: the embedded server's handle caches a stopped server
        code = f"from pathlib import Path; from services.cli import embedded; embedded.start_postgres(Path({str(self.data_dir.resolve())!r}))"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)

    def stop_redis(self) -> None:
        assert embedded.stop_redis(self.data_dir.resolve())

    def start_redis(self) -> None:
        embedded.start_redis(self.data_dir.resolve())

    @contextlib.contextmanager
    def outage(self, server: str) -> Iterator[None]:
        """``server`` ("postgres" or "redis") stopped for the block, started again after it."""
        getattr(self, f"stop_{server}")()
        try:
            yield
        finally:
            getattr(self, f"start_{server}")()

    # -- what must not be left behind ------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Files no row accounts for, once every job has ended: a version folder no version is
        registered for, a graph its version does not list, a job's work folder, a temporary file."""
        versions = {
            str(row["id"]): json.loads(row["artifacts"])
            if isinstance(row["artifacts"], str)
            else row["artifacts"]
            for row in self.sql("SELECT id, artifacts FROM model_versions")
        }
        active = {
            str(r["id"])
            for r in self.sql("SELECT id FROM training_jobs WHERE status IN ('queued', 'running')")
        }
        found: list[str] = []
        root = self.data_dir
        for job in sorted((root / "jobs").glob("*")):
            if job.name not in active:
                found.append(str(job.relative_to(root)))
        for folder in sorted((root / "artifacts").glob("*/*")):
            if folder.name not in versions:
                found.append(str(folder.relative_to(root)))
                continue
            listed = json.dumps(versions[folder.name])
            for graph in folder.glob("*.onnx"):
                if str(graph.relative_to(root)) not in listed:
                    found.append(str(graph.relative_to(root)))
        for pattern in ("**/.*.tmp", "**/.rebuild-*", "**/checkpoint.old", "**/checkpoint.tmp"):
            for path in (root / "artifacts").glob(pattern):
                found.append(str(path.relative_to(root)))
            for path in (root / "jobs").glob(pattern):
                found.append(str(path.relative_to(root)))
        return sorted(set(found))


def new_project(stack: Stack, slug: str, products: int = 60, queries: int = 120) -> str:
    """A project with a budget, a catalog and graded judgments; the judgments' dataset version id."""
    from tests.support.data import shop_data

    stack.api(
        "POST",
        "/projects",
        expect=201,
        json={
            "slug": slug,
            "name": slug,
            "budget": {"cpu_hours": 50, "gpu_hours": 0},
            "max_concurrent_jobs": 4,
        },
    )
    catalog, judgments = shop_data(products, queries)
    stack.upload(slug, "catalog.csv", catalog, "catalog")
    return stack.upload(slug, "judgments.csv", judgments, "relevance")
