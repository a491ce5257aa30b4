"""How long each web console page takes the server with a busy project: 2,000 tasks, 200 training jobs
(each with a 200-point loss curve) and 100 model versions with metrics and baselines.

    python bench/console.py [--database-url postgresql://postgres@127.0.0.1/postgres] [--runs 20]

Makes a scratch database next to the one named (dropped at the end) and migrates it. The project, its
five members and its datasets are made through the API (the datasets imported as a person would); the
rows only workers write (tasks in bulk, jobs, model versions, deployments, audit entries) are inserted
with SQLAlchemy. Then each page is requested ``--runs`` times through the whole api application
(middleware, session cookie, database, templates) in process, so the times are the server's alone: the
median and the slowest, with the page's size."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import platform
import random
import re
import statistics
import time
import uuid
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from scratch import scratch_database  # bench/scratch.py, beside this script

from services.api.app import create_app
from services.api.auth.service import ensure_user, issue_key
from shared.config import Settings, to_async_url
from shared.db import create_engine, create_sessionmaker
from shared.models import AuditLog, Deployment, Milestone, ModelVersion, Task, TrainingJob
from shared.models.enums import KeyRole

STATUSES = ["todo", "in_progress", "in_review", "blocked", "done"]
PHASES = ("loading data", "train", "done")
METRICS = ("ndcg@10", "mrr@10", "recall@10", "catalog_ndcg@10")


def shop_csv(queries: int = 300, products: int = 400) -> tuple[str, str]:
    rng = random.Random(7)
    catalog = "product_id,title\n" + "".join(f"p{i},Product number {i}\n" for i in range(products))
    rows = [
        f"query {q},p{p},{rng.randrange(4)}\n" for q in range(queries) for p in rng.sample(range(products), 5)
    ]
    judgments = "query,product_id,grade\n" + "".join(rows)
    return catalog, judgments


async def seed(client: httpx.AsyncClient, admin: str, settings: Settings) -> dict[str, Any]:
    """The busy project; what the pages are asked about."""
    headers = {"Authorization": f"Bearer {admin}"}

    async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = await client.request(method, f"/api/v1{path}", headers=headers, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    owner = await call("POST", "/users", 201, json={"name": "Owner", "email": "owner@example.com"})
    key = (await call("POST", "/keys", 201, json={"user_id": owner["id"], "name": "bench"}))["key"]
    headers = {"Authorization": f"Bearer {key}"}
    goal = {"metric": "ndcg@10", "value": 0.5}
    project = await call(
        "POST", "/projects", 201, json={"slug": "busy", "name": "Busy project", "goal": goal}
    )
    people = [owner["id"]]
    for i in range(4):
        user = await client.post("/api/v1/users", headers={"Authorization": f"Bearer {admin}"},
                                 json={"name": f"Person {i}", "email": f"p{i}@example.com"})  # fmt: skip
        people.append(user.json()["id"])
        await call(
            "POST", "/projects/busy/members", 201, json={"user_id": user.json()["id"], "role": "member"}
        )
    catalog, judgments = shop_csv()
    versions = []
    for name, body, kind in (("catalog", catalog, "catalog"), ("judgments", judgments, "relevance")):
        made = await call("POST", "/projects/busy/datasets", 201, data={"kind": kind, "name": name},
                          files=[("file", (f"{name}.csv", io.BytesIO(body.encode())))])  # fmt: skip
        versions.append(made["version_id"])

    project_id = uuid.UUID(project["id"])
    owner_id = uuid.UUID(owner["id"])
    rng = random.Random(1)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker() as session:
        milestones = [Milestone(project_id=project_id, title=f"Milestone {i}") for i in range(10)]
        session.add_all(milestones)
        await session.flush()
        session.add_all(
            Task(project_id=project_id, title=f"Task {i}: label queries {i * 7}", status=STATUSES[i % 5],
                 assignee_id=uuid.UUID(people[i % 5]), milestone_id=milestones[i % 10].id,
                 estimate_hours=float(i % 8 + 1), priority=["low", "medium", "high", "urgent"][i % 4])
            for i in range(2000)
        )  # fmt: skip
        jobs = []
        for i in range(200):
            curve = [[s * 5, round(2.5 * 0.99**s + rng.random() * 0.05, 4)] for s in range(1, 201)]
            started = now - dt.timedelta(hours=200 - i)
            jobs.append(TrainingJob(
                project_id=project_id, job_type="bi_encoder", status="succeeded" if i < 195 else "running",
                dataset_version_id=uuid.UUID(versions[1]), base_model="all-MiniLM-L6-v2",
                device="cpu", compute_seconds=300.0 + i, started_at=started,
                finished_at=started + dt.timedelta(minutes=5) if i < 195 else None, heartbeat_at=now,
                progress={"phase": "done", "step": 1000, "total_steps": 1000, "loss_curve": curve,
                          "phases": [{"phase": p, "at": started.isoformat()} for p in PHASES]},
            ))  # fmt: skip
        session.add_all(jobs)
        await session.flush()
        models = []
        for n in range(1, 101):
            metrics = {
                m: round(rng.uniform(0.3, 0.9), 4)
                for m in ("ndcg@10", "mrr@10", "recall@10", "catalog_ndcg@10")
            }
            baselines = {
                b: {m: round(rng.uniform(0.2, 0.7), 4) for m in metrics} for b in ("bm25", "zero_shot")
            }
            models.append(ModelVersion(
                project_id=project_id, version=n, task_type="bi_encoder", base_model="m",
                training_job_id=jobs[n].id, dataset_version_id=uuid.UUID(versions[1]), status="candidate",
                metrics={**metrics, "queries": 300}, baselines=baselines,
                artifacts={"model": {"path": "x.onnx"}},
            ))  # fmt: skip
        session.add_all(models)
        await session.flush()
        for n in range(20):
            session.add(Deployment(project_id=project_id, role="retriever", model_version_id=models[n * 5].id,
                                   is_active=n == 19, deactivated_at=None if n == 19 else now))  # fmt: skip
        session.add_all(
            AuditLog(project_id=project_id, actor_user_id=owner_id, action="task.update", entity_type="task",
                     entity_id=str(uuid.uuid4()), before={"status": "todo"}, after={"status": "in_progress"})
            for _ in range(5000)
        )  # fmt: skip
        await session.commit()
    await engine.dispose()
    return {
        "key": key,
        "job": jobs[-1].id,
        "version": models[-1].id,
        "other": models[-2].id,
        "data": versions[1],
    }


async def run(args: argparse.Namespace) -> None:
    async with scratch_database(args.database_url) as scratch:
        database_url = to_async_url(scratch.render_as_string(hide_password=False))
        settings = Settings(
            database_url=database_url,
            redis_url=args.redis_url,
            pipeline_controller=False,
            data_dir=args.data_dir,
        )
        engine = create_engine(settings)
        async with create_sessionmaker(engine)() as session:
            user = await ensure_user(session, name="Admin", email="admin@example.com")
            issued = await issue_key(session, user=user, secret=settings.secret_key.get_secret_value(),
                                     name="bench", role=KeyRole.admin)  # fmt: skip
            await session.commit()
        await engine.dispose()
        async with LifespanManager(create_app(settings)) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as client:
                began = time.perf_counter()
                seeded = await seed(client, issued.key, settings)
                print(f"seeded 2,000 tasks, 200 jobs, 100 model versions, 5,000 audit entries in "
                      f"{time.perf_counter() - began:.0f} s")  # fmt: skip
                login = await client.get("/ui/login")
                token = re.search(r'name="login_token" value="([^"]+)"', login.text)
                assert token is not None
                signed = await client.post(
                    "/ui/login", data={"api_key": seeded["key"], "login_token": token.group(1)}
                )
                assert signed.status_code == 303, signed.text
                pages = {
                    "projects": "/ui/",
                    "project (board, milestones, members, budget burn)": "/ui/projects/busy",
                    "tasks in one column, 100 a page": "/ui/projects/busy/tasks?status=todo",
                    "audit log": "/ui/projects/busy/audit",
                    "data": "/ui/projects/busy/data",
                    "dataset version": f"/ui/dataset-versions/{seeded['data']}",
                    "training": "/ui/projects/busy/training",
                    "job (200-point loss curve)": f"/ui/jobs/{seeded['job']}",
                    "models (and deployment history)": "/ui/projects/busy/models",
                    "model version beside baselines": f"/ui/model-versions/{seeded['version']}",
                    "comparison of two versions": f"/ui/projects/busy/compare?a={seeded['other']}"
                    f"&b={seeded['version']}",
                    "loop": "/ui/projects/busy/loop",
                    "online (no impressions)": "/ui/projects/busy/online",
                }  # fmt: skip
                print(f"{'page':<52} {'median':>8} {'slowest':>8} {'size':>9}")
                worst = 0.0
                for label, path in pages.items():
                    times = []
                    for _ in range(args.runs):
                        began = time.perf_counter()
                        page = await client.get(path)
                        times.append(time.perf_counter() - began)
                        assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
                    median = statistics.median(times)
                    print(f"{label:<52} {median * 1000:>6.0f} ms {max(times) * 1000:>5.0f} ms "
                          f"{len(page.content) / 1024:>6.0f} KiB")  # fmt: skip
                    worst = max(worst, median)
                print(f"slowest median: {worst * 1000:.0f} ms ({args.runs} runs a page)")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--data-dir", default="/tmp/recforge-bench-console", help="Where imported data is kept."
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
