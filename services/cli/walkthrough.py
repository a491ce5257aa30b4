"""The `make demo` walk-through: one project from data to `/recommend`, through the public HTTP APIs only.

It doubles as the example a frontend developer reads: every step is a plain HTTP call with a bearer key,
against the API (`/api/v1/...`) and the inference service (`/recommend`, `/events`). In order:

1. people: three users (POST /users) who will staff the project;
2. the project, with a goal, a budget, members, a milestone and tasks;
3. data: the sample shop (or RECFORGE_DEMO_DATA) imported as dataset versions;
4. fine-tuning: a bi-encoder and a cross-encoder job, followed through GET /training-jobs/{id};
5. evaluation: each model beside the BM25 and zero-shot baselines the trainer measured;
6. promotion of the best versions, and a service key for the inference service;
7. /recommend for a few queries, with filters and reranking, and for a user after their clicks;
8. the project's progress, and the URLs of the running stack.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from services.cli.sample_shop import generate
from shared.errors import AppError, ValidationFailed

SAMPLE_QUERIES = ("crimson commode", "slim cordles drill", "ivory overhead fan")
REAL_DATA_QUERIES = ("cordless drill", "ceiling fan with light", "vinyl flooring")
PEOPLE = (  # (name, e-mail local part, project role, what they do here)
    ("Maya Chen", "maya", "maintainer", "ML engineer"),
    ("Sam Ortiz", "sam", "member", "data labeller"),
    ("Priya Shah", "priya", "viewer", "product manager"),
)
METRICS = (  # (label, key in the trainer's metrics)
    ("rerank nDCG@10", "ndcg@10"),
    ("rerank MRR@10", "mrr@10"),
    ("catalog nDCG@10", "catalog_ndcg@10"),
    ("catalog Recall@10", "catalog_recall@10"),
)
SERVE_TIMEOUT_S = 180.0
GOAL = 0.8  # catalog nDCG@10 the project aims for
LOOP_EVENTS = 2000  # shopper events after which the demo's pipeline retrains


class DemoError(AppError):
    """A step of the walk-through failed; the message says which and what the service answered."""

    status_code = 502
    error = "demo_failed"


@dataclass
class DemoOptions:
    api_url: str
    inference_url: str
    api_key: str
    work_dir: Path
    data: Path | None = None
    base_model: str | None = None
    steps: int = 150
    cross_steps: int = 300
    products: int = 2000
    queries: int = 1000
    slug: str = "demo-shop"
    recommend_queries: tuple[str, ...] = ()
    watch: Callable[[httpx.Client, str], dict[str, Any]] | None = None


@dataclass
class DemoResult:
    project: str
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployed: dict[str, str] = field(default_factory=dict)
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    service_key: str = ""
    pipeline: dict[str, Any] = field(default_factory=dict)


def data_source(path: Path) -> tuple[str, list[Path]]:
    """The import format and files of RECFORGE_DEMO_DATA: a Home Depot CSV, an ESCI or a WANDS folder."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValidationFailed(f"{path}: give the Home Depot train CSV, or an ESCI or WANDS folder")
        return "homedepot", [path]
    if not path.is_dir():
        raise ValidationFailed(f"{path}: no such file or folder")
    names = {p.name for p in path.iterdir()}
    if "shopping_queries_dataset_examples.parquet" in names:
        files = ["shopping_queries_dataset_examples.parquet", "shopping_queries_dataset_products.parquet"]
        return "esci", [path / n for n in files]
    if {"product.csv", "query.csv", "label.csv"} <= names:
        return "wands", [path / n for n in ("product.csv", "query.csv", "label.csv")]
    raise ValidationFailed(
        f"{path}: not an ESCI folder (shopping_queries_dataset_*.parquet) "
        "nor a WANDS folder (product.csv, query.csv, label.csv)"
    )


STEPS = 9


class Walkthrough:
    def __init__(self, options: DemoOptions, console: Console):
        self.o = options
        self.console = console
        timeout = httpx.Timeout(30.0, read=900.0, write=900.0)
        auth = {"Authorization": f"Bearer {options.api_key}"}
        self.api = httpx.Client(base_url=options.api_url, headers=auth, timeout=timeout)
        self.inference = httpx.Client(base_url=options.inference_url, timeout=timeout)
        self.tasks: dict[str, str] = {}
        self.members: dict[str, str] = {}

    # -- plumbing ---------------------------------------------------------------------------------

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        response = self.api.request(method, f"/api/v1{path}", **kwargs)
        if response.status_code not in expect:
            raise DemoError(f"{method} /api/v1{path} answered {response.status_code}: {response.text[:800]}")
        return response.json() if response.content else None

    def step(self, number: int, title: str) -> None:
        self.console.rule(f"[bold]{number}/{STEPS} {title}")

    def move(self, task: str, *statuses: str, **links: str) -> None:
        """Walk a task through the board (each move is one PATCH the API checks)."""
        if links:
            self.call("PATCH", f"/tasks/{self.tasks[task]}", json=links)
        for status in statuses:
            self.call("PATCH", f"/tasks/{self.tasks[task]}", json={"status": status})

    def close(self) -> None:
        self.api.close()
        self.inference.close()

    # -- the steps --------------------------------------------------------------------------------

    def people(self) -> None:
        self.step(1, "People")
        domain = f"{self.o.slug}.example.com"
        for name, local, role, job in PEOPLE:
            email = f"{local}@{domain}"
            response = self.api.post("/api/v1/users", json={"name": name, "email": email})
            if response.status_code == 201:
                user = response.json()
            elif response.status_code == 409:  # a run before this one made them
                user = self._find_user(email)
            else:
                raise DemoError(f"POST /api/v1/users answered {response.status_code}: {response.text[:800]}")
            self.members[local] = user["id"]
            self.console.print(f"  {name:<11} {email:<32} will be {role} ({job})")

    def _find_user(self, email: str) -> dict[str, Any]:
        cursor = None
        while True:
            page = self.call("GET", "/users", params={"limit": 200, **({"cursor": cursor} if cursor else {})})
            for user in page["items"]:
                if user["email"] == email:
                    return dict(user)
            cursor = page.get("next_cursor")
            if not cursor:
                raise DemoError(f"the API says {email} exists but does not list them")

    def project(self) -> str:
        self.step(2, "Project, members, milestone, tasks")
        slug = self.o.slug
        for n in range(2, 1000):
            if self.api.get(f"/api/v1/projects/{slug}").status_code == 404:
                break
            slug = f"{self.o.slug}-{n}"
        today = dt.date.today()
        project = self.call(
            "POST",
            "/projects",
            json={
                "slug": slug,
                "name": "Demo shop search",
                "description": "Fine-tuned retrieval and reranking for the shop's search box.",
                "goal": {"metric": "catalog_ndcg@10", "operator": ">=", "value": GOAL},
                "status": "active",
                "start_date": today.isoformat(),
                "target_date": (today + dt.timedelta(days=30)).isoformat(),
                "budget": {"cpu_hours": 20, "gpu_hours": 0},
                "max_concurrent_jobs": 2,
            },
        )
        self.console.print(f"  project [bold]{slug}[/] ({project['id']}), goal catalog nDCG@10 >= {GOAL}")
        for local, user_id in self.members.items():
            role = next(r for _, n, r, _ in PEOPLE if n == local)
            self.call("POST", f"/projects/{slug}/members", json={"user_id": user_id, "role": role})
        self.console.print(f"  members: you (owner), {', '.join(f'{n} ({r})' for n, _, r, _ in PEOPLE)}")
        milestone = self.call(
            "POST",
            f"/projects/{slug}/milestones",
            json={
                "title": "Search v1 in production",
                "due_date": (today + dt.timedelta(days=14)).isoformat(),
            },
        )
        plan = (
            ("data", "Import the catalog and the graded judgments", "sam", 2),
            ("retriever", "Fine-tune the retriever (bi-encoder)", "maya", 4),
            ("reranker", "Fine-tune the reranker (cross-encoder)", "maya", 4),
            ("deploy", "Promote the best versions to production", "maya", 1),
            ("review", "Review the search results with the team", "priya", 1),
        )
        for key, title, who, hours in plan:
            task = self.call(
                "POST",
                f"/projects/{slug}/tasks",
                json={
                    "title": title,
                    "assignee_id": self.members[who],
                    "milestone_id": milestone["id"],
                    "estimate_hours": hours,
                    "labels": ["demo"],
                },
            )
            self.tasks[key] = task["id"]
            self.console.print(f"  task: {title} -> {who}")
        return slug

    def data(self, slug: str) -> str:
        """Import the data; return the relevance dataset version the jobs train on."""
        from services.cli.data import print_import, upload

        self.step(3, "Data")
        self.move("data", "in_progress")
        if self.o.data is None:
            shop = generate(products=self.o.products, queries=self.o.queries)
            catalog, judgments = shop.write(self.o.work_dir / "sample")
            self.console.print(
                f"  the sample shop: {len(shop.products):,} products, "
                f"{len({q for q, _, _ in shop.judgments}):,} queries, "
                f"{len(shop.judgments):,} graded judgments (written to {catalog.parent})"
            )
            imports = [([catalog], {"kind": "catalog", "name": "catalog"}),
                       ([judgments], {"kind": "relevance", "name": "judgments"})]  # fmt: skip
        else:
            data_format, files = data_source(self.o.data)
            self.console.print(f"  {data_format} data from {self.o.data}")
            imports = [(files, {"format": data_format})]
        version_id = dataset_id = ""
        for files, fields in imports:
            response = upload(self.api, slug, files, fields)
            if response.status_code not in (200, 201):
                raise DemoError(
                    f"importing {files[0].name} answered {response.status_code}: {response.text[:800]}"
                )
            result = response.json()
            print_import(result)
            version_id, dataset_id = result["version_id"], result["id"]
        self.move("data", "in_review", "done", dataset_id=dataset_id)
        return version_id

    def train(self, slug: str, dataset_version: str) -> dict[str, dict[str, Any]]:
        from services.cli.jobs import watch_job

        self.step(4, "Fine-tuning")
        watch = self.o.watch or watch_job
        versions: dict[str, dict[str, Any]] = {}
        plan = (  # the cross-encoder's classification head starts untrained: more steps, a higher rate
            ("retriever", "bi_encoder", {"max_steps": self.o.steps, "learning_rate": 5e-5}),
            ("reranker", "cross_encoder", {"max_steps": self.o.cross_steps, "learning_rate": 1e-4}),
        )
        for task, job_type, hyperparameters in plan:
            self.move(task, "in_progress")
            body: dict[str, Any] = {
                "job_type": job_type,
                "dataset_version_id": dataset_version,
                "hyperparameters": {**hyperparameters, "batch_size": 32, "max_length": 48},
                "compute_limit_hours": 1.0,
            }
            if self.o.base_model:
                body["base_model"] = self.o.base_model
            job = self.call(
                "POST",
                f"/projects/{slug}/training-jobs",
                expect=(202,),
                json=body,
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            self.console.print(
                f"  {job_type} job {job['id']} queued; following GET /training-jobs/{job['id']}"
            )
            job = watch(self.api, job["id"])
            if job["status"] != "succeeded":
                raise DemoError(f"the {job_type} job ended {job['status']}: {job.get('error')}")
            version = self.call("GET", f"/model-versions/{job['model_version_ids'][0]}")
            versions[job_type] = version
            compute = version["compute"]
            self.console.print(
                f"  {job_type}: version {version['version']} registered ({version['id']}); "
                f"{compute['steps']} steps in {compute['train_seconds']:.0f} s, "
                f"{compute['pairs_per_s']} pairs/s on {compute['device']}"
            )
            self.move(task, "in_review", training_job_id=job["id"], model_version_id=version["id"])
        return versions

    def evaluation(self, versions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        self.step(5, "Evaluation on the validation queries (never trained on)")
        bi = versions["bi_encoder"]
        baselines = {name: bi["baselines"].get(name, {}) for name in ("bm25", "zero_shot")}
        columns = {
            "BM25": baselines["bm25"],
            "zero-shot MiniLM" if not self.o.base_model else "zero-shot base": baselines["zero_shot"],
            "bi-encoder": bi["metrics"],
            "cross-encoder": versions["cross_encoder"]["metrics"],
        }
        table = Table("metric", *columns, title=f"{bi['metrics'].get('queries', '?')} validation queries")
        for label, key in METRICS:
            if any(key in values for values in columns.values()):
                cells = [f"{values[key]:.4f}" if key in values else "-" for values in columns.values()]
                table.add_row(label, *cells)
        size = bi["metrics"].get("catalog_size")
        self.console.print(table)
        self.console.print(
            "  rerank: each query's judged products reordered; catalog: retrieval from all "
            f"{size if size else 'the'} products, unjudged ones counting as irrelevant."
        )
        return baselines

    def promote(self, slug: str, versions: dict[str, dict[str, Any]]) -> dict[str, str]:
        """The bi-encoder serves retrieval; the cross-encoder reranks only where it beats it."""
        self.step(6, "Deployment")
        self.move("deploy", "in_progress")
        bi, cross = versions["bi_encoder"], versions["cross_encoder"]
        chosen = {"retriever": bi}
        if cross["metrics"].get("ndcg@10", 0.0) > bi["metrics"].get("ndcg@10", 0.0):
            chosen["reranker"] = cross
        else:
            self.console.print(
                "  the cross-encoder does not rerank better than the bi-encoder here "
                f"(nDCG@10 {cross['metrics'].get('ndcg@10', 0):.4f} "
                f"vs {bi['metrics'].get('ndcg@10', 0):.4f}): "
                "it stays unpromoted"
            )
        deployed: dict[str, str] = {}
        for role, version in chosen.items():
            deployment = self.call("POST", f"/model-versions/{version['id']}/promote", json={})
            deployed[role] = version["id"]
            self.console.print(
                f"  {role}: {version['task_type']} version {version['version']} now serves all traffic "
                f"(deployment {deployment['id']})"
            )
        self.move("deploy", "in_review", "done", deployment_id=deployment["id"])
        for task in ("retriever", "reranker"):
            self.move(task, "done")
        return deployed

    def service_key(self, slug: str) -> str:
        me = self.call("GET", "/users/me")
        key = self.call(
            "POST",
            "/keys",
            json={"user_id": me["id"], "name": f"{slug} storefront", "role": "service", "project_id": slug},
        )
        self.console.print(f"  a service key for the storefront (scopes {', '.join(key['scopes'])})")
        return str(key["key"])

    def wait_served(self, slug: str, key: str, version_id: str) -> None:
        with self.console.status("  waiting for the inference service to load the new version..."):
            wait_served(self.inference, slug, key, version_id)

    def recommend(self, slug: str, key: str, rerank: bool) -> dict[str, list[dict[str, Any]]]:
        self.step(7, "/recommend")
        queries = self.o.recommend_queries or (SAMPLE_QUERIES if self.o.data is None else REAL_DATA_QUERIES)
        answers: dict[str, list[dict[str, Any]]] = {}
        asks: list[tuple[str, dict[str, Any]]] = [(q, {"query": q, "k": 5}) for q in queries]
        asks.append(
            (f"{queries[0]} (in stock, under $200)",
             {"query": queries[0], "k": 5, "filters": {"in_stock": True, "price_max": 200}})
        )  # fmt: skip
        if rerank:
            asks.append((f"{queries[-1]} (reranked)", {"query": queries[-1], "k": 5, "rerank": True}))
        for label, ask in asks:
            answer = self._recommend(slug, key, ask)
            answers[label] = answer["items"]
            self._print_items(f'"{label}"', answer)
        # a shopper clicks two of the first answers; /events stores it, /recommend reads it back
        clicked = [item["product_id"] for item in answers[queries[0]][:2]]
        user = f"demo-user-{uuid.uuid4().hex[:6]}"
        events = [{"event": "click", "user_id": user, "product_id": p} for p in clicked]
        response = self.inference.post(
            "/events", json={"project": slug, "events": events}, headers=_bearer(key)
        )
        if response.status_code not in (200, 202):
            raise DemoError(f"POST /events answered {response.status_code}: {response.text[:500]}")
        answer = self._recommend(slug, key, {"user_id": user, "k": 5})
        answers[f"user {user}"] = answer["items"]
        self._print_items(f"user {user}, who clicked {', '.join(clicked)}", answer)
        return answers

    def _recommend(self, slug: str, key: str, ask: dict[str, Any]) -> dict[str, Any]:
        response = self.inference.post("/recommend", json={"project": slug, **ask}, headers=_bearer(key))
        if response.status_code != 200:
            raise DemoError(f"POST /recommend answered {response.status_code}: {response.text[:500]}")
        return dict(response.json())

    def _print_items(self, label: str, answer: dict[str, Any]) -> None:
        table = Table("#", "product", "title", "score", title=f"{label}  ({answer['took_ms']:.1f} ms)")
        for rank, item in enumerate(answer["items"], start=1):
            table.add_row(str(rank), item["product_id"], item["title"][:70], f"{item['score']:.4f}")
        self.console.print(table)

    def wrap_up(self, slug: str, service_key: str) -> None:
        self.step(8, "Progress and where everything is")
        self.move("review", "in_progress")
        progress = self.call("GET", f"/projects/{slug}/progress")
        work, budget, best = progress["work"], progress["budget"], progress.get("best_model") or {}
        self.console.print(
            f"  work done: {work['done_estimate_hours']:g} of {work['total_estimate_hours']:g} "
            f"estimated hours; compute used {budget['used_cpu_hours']:.3f} of {budget['cpu_hours']} CPU hours"
        )
        if best:
            verdict = "meets" if best["meets_goal"] else "does not meet yet"
            self.console.print(
                f"  best model on the goal's metric: version {best['version']}, {best['metric']} "
                f"{best['value']:.4f}, which {verdict} the goal "
                f"({best['goal']['operator']} {best['goal']['value']})"
            )
        api, inference = self.o.api_url, self.o.inference_url
        self.console.print(
            f"\n  Web console     {api}/ui/projects/{slug}   (sign in with an API key)\n"
            f"  API docs        {api}/docs   (schema {api}/openapi.json)\n"
            f"  Inference docs  {inference}/docs   (schema {inference}/openapi.json)\n"
            f"  Project         {api}/api/v1/projects/{slug}\n\n"
            "  Try it:\n"
            f"    curl -s {inference}/recommend -H 'Authorization: Bearer {service_key}' \\\n"
            "      -H 'Content-Type: application/json' "
            f'-d \'{{"project": "{slug}", "query": "drill"}}\'\n\n'
            "  The stack keeps running; `make down` stops it."
        )

    def loop(self, slug: str, dataset_version: str) -> dict[str, Any]:
        """Save a pipeline that retrains the retriever from shoppers' feedback on its own, and say how to
        send it shoppers and where to watch it."""
        self.step(9, "The loop: retraining from shoppers, on its own")
        self.call("PATCH", f"/projects/{slug}", json={"exploration_percent": 20})
        pipeline: dict[str, Any] = self.call(
            "POST",
            f"/projects/{slug}/pipelines",
            json={
                "name": "learn-from-shoppers",
                "role": "retriever",
                "description": "Retrain the retriever on what shoppers click, cart and buy.",
                "triggers": {"min_new_events": LOOP_EVENTS},
                "training": {
                    "job_type": "bi_encoder",
                    "feedback": {"days": 1, "min_impressions": 5},
                    "hyperparameters": {"max_steps": self.o.steps, "batch_size": 32, "max_length": 48},
                    "base_model": self.o.base_model,
                },
                "gate": {
                    "golden_dataset_version_id": dataset_version,
                    "rules": [{"metric": "catalog_ndcg@10", "max_drop": 0.01}],
                },
                "rollout": {"canary_percent": 50, "min_requests": 1000, "max_looks": 3},
            },
        )
        self.console.print(
            f"  pipeline {pipeline['id']} ({pipeline['name']}): once shoppers have sent "
            f"{LOOP_EVENTS:,} clicks, carts and purchases it collects them into training data, fine-tunes, "
            "checks the candidate against production on the people's judgments, canaries it at 50% and "
            "promotes it or rolls it back by what shoppers do; 20% of searches are explored."
        )
        judgments = self.o.work_dir / "sample" / "judgments.csv"
        shoppers = (
            f"recforge simulate -p {slug} --judgments {judgments} --searches 20000 --rate 20"
            if self.o.data is None
            else f"recforge simulate -p {slug} --judgments <query,product_id,grade CSV> --searches 20000"
        )
        self.console.print(
            "\n  Send it shoppers (a service key in RECFORGE_SERVICE_KEY, as printed above):\n"
            f"    {shoppers}\n"
            "  Watch it:\n"
            f"    recforge pipelines runs list -p {slug}\n"
            "    recforge pipelines runs watch <run id>\n"
            f"    {self.o.api_url}/api/v1/projects/{slug}/pipeline-runs"
        )
        return pipeline

    def run(self) -> DemoResult:
        try:
            self.people()
            slug = self.project()
            result = DemoResult(project=slug)
            dataset_version = self.data(slug)
            result.versions = self.train(slug, dataset_version)
            result.baselines = self.evaluation(result.versions)
            result.deployed = self.promote(slug, result.versions)
            result.service_key = self.service_key(slug)
            self.wait_served(slug, result.service_key, result.deployed["retriever"])
            result.answers = self.recommend(slug, result.service_key, "reranker" in result.deployed)
            self.wrap_up(slug, result.service_key)
            result.pipeline = self.loop(slug, dataset_version)
            return result
        except httpx.TransportError as exc:
            raise DemoError(
                f"lost the connection to a service ({exc}); is the stack up? `recforge status`"
            ) from exc
        finally:
            self.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_served(
    inference: httpx.Client, slug: str, key: str, version_id: str, *, reranker: bool = False
) -> None:
    """The inference service picks a promotion up from Redis; wait until /recommend answers with it."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    body = {"project": slug, "query": "x", "k": 1, "rerank": reranker}
    field = "reranker_version" if reranker else "model_version"
    last = ""
    while time.monotonic() < deadline:
        response = inference.post("/recommend", json=body, headers=_bearer(key))
        if response.status_code == 200 and response.json()[field] == version_id:
            return
        last = f"{response.status_code}: {response.text[:300]}"
        time.sleep(0.5)
    raise DemoError(f"the inference service did not serve version {version_id} in time; last answer {last}")
