"""Search and recommendation quality, trained and served through a running RecForge stack.

    recforge up --detach
    python bench/quality.py ../shared/data/homedepot/relevance_dev.csv --format homedepot --steps 200
    python bench/quality.py ../shared/data/amazon_scientific --format unisrec --steps 300

It imports the data into a new project, then trains through the queue: the base model registered as it
is (`max_steps=0`, the zero-shot version), a fine-tuned bi-encoder and, on relevance data, a fine-tuned
cross-encoder. On the validation split the platform made at import (never trained on) it prints:

- relevance data, **rerank view**: each query's judged products reordered (nDCG@10, MRR@10), as the
  trainer's evaluation measured it for BM25, zero-shot and each fine-tuned model;
- relevance data, **catalog view**: retrieval from the whole catalog through `/recommend` (nDCG@10,
  Recall@10; unjudged products count as irrelevant): BM25 alone, zero-shot and fine-tuned dense alone,
  each fused with BM25 (hybrid), and the hybrid reranked by the cross-encoder;
- sequence data: for each validation user's latest step, the next item among all items through
  `/recommend` with the history (history excluded; Recall@10, nDCG@10): popularity, BM25 over the history's
  titles, zero-shot and fine-tuned (the user as the text of their latest items, as `/recommend` reads
  them), and zero-shot over the recency-weighted mean of the history's item embeddings.

Each view ends with its goal beside the measurement: on relevance data the best fine-tuned catalog
nDCG@10 at least 1.2x BM25's and the best fine-tuned rerank nDCG@10 at least the best baseline's +
0.01; on sequence data the fine-tuned Recall@10 at least 1.2x the best baseline's. `--defaults` trains
with the platform's default hyperparameters (one epoch), as a user who sets none would.

With `--feedback N` (relevance data) it measures learning from shoppers instead of from judgments: the
zero-shot version is promoted, the project explores a fifth of its searches, N simulated shoppers
(`recforge simulate`'s module) search with the training split's queries and click, cart and buy by
those queries' judged grades, a feedback job turns the logs into a relevance dataset, and a bi-encoder
fine-tuned on that dataset alone (no judgment) is compared with the zero-shot version on the held
validation queries, which no simulated shopper searched for:

    python bench/quality.py judgments.csv --format csv --kind relevance --catalog catalog.csv --feedback 20000

Needs the stack's settings (RECFORGE_* as `recforge up` had them): it reads the validation split from the
dataset version's files, as the trainer does. With no --api-key it issues an admin key itself."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from options import hyperparameter  # noqa: E402  (bench/options.py, beside this script)

from services.cli.data import upload  # noqa: E402
from services.cli.jobs import watch_job  # noqa: E402
from services.cli.walkthrough import wait_served  # noqa: E402
from shared.config import get_settings  # noqa: E402
from shared.datasets.catalog import history_text  # noqa: E402
from shared.datasets.examples import Examples, load  # noqa: E402
from shared.metrics import CATALOG_DEPTH, ranking_metrics  # noqa: E402
from shared.models.enums import DatasetKind, KeyRole  # noqa: E402
from shared.search import dense_top_k  # noqa: E402
from shared.storage import object_store  # noqa: E402

console = Console()
K = 10
RECENCY_DECAY = 0.8  # weight of an item one step older than the next, in the recency-weighted baseline


class Bench:
    def __init__(self, args: argparse.Namespace):
        settings = get_settings()
        self.settings = settings
        self.args = args
        key = args.api_key or os.environ.get("RECFORGE_API_KEY")
        if not key:
            from services.cli.keys import issue

            key = issue(
                settings, KeyRole.admin, email="bench@recforge.local", user_name="Bench", name="bench"
            )
        api = args.api_url or f"http://{settings.host}:{settings.api_port}"
        inference = args.inference_url or f"http://{settings.host}:{settings.inference_port}"
        timeout = httpx.Timeout(30.0, read=900.0, write=900.0)
        self.api = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        self.inference = httpx.Client(base_url=inference, timeout=timeout)

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201, 202), **kw: Any) -> Any:
        response = self.api.request(method, f"/api/v1{path}", **kw)
        if response.status_code not in expect:
            sys.exit(f"{method} /api/v1{path} answered {response.status_code}: {response.text[:800]}")
        return response.json()

    # -- platform steps ---------------------------------------------------------------------------

    def project(self) -> str:
        slug = self.args.project or f"quality-{self.args.format}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        self.call(
            "POST",
            "/projects",
            json={"slug": slug, "name": f"Quality bench ({self.args.format})", "status": "active",
                  "budget": {"cpu_hours": 100, "gpu_hours": 10}, "max_concurrent_jobs": 1},
        )  # fmt: skip
        return slug

    def data(self, slug: str) -> dict[str, Any]:
        if self.args.catalog:
            self._import(slug, [self.args.catalog], {"kind": "catalog", "name": "catalog"})
        fields = {"format": self.args.format}
        if self.args.kind:
            fields["kind"] = self.args.kind
        files = (
            sorted(p for p in self.args.path.iterdir() if p.is_file())
            if self.args.path.is_dir()
            else [self.args.path]
        )
        result = self._import(slug, files, fields)
        return dict(self.call("GET", f"/dataset-versions/{result['version_id']}")) | {"kind": result["kind"]}

    def _import(self, slug: str, files: list[Path], fields: dict[str, str]) -> dict[str, Any]:
        started = time.monotonic()
        response = upload(self.api, slug, files, fields)
        if response.status_code not in (200, 201):
            sys.exit(f"import answered {response.status_code}: {response.text[:800]}")
        result: dict[str, Any] = response.json()
        console.print(
            f"imported {result['name']} v{result['version']}: {result['rows']:,} rows "
            f"({time.monotonic() - started:.0f} s)"
        )
        return result

    def train(
        self, slug: str, version: str, job_type: str, hyperparameters: dict[str, Any]
    ) -> dict[str, Any]:
        body = {"job_type": job_type, "dataset_version_id": version, "hyperparameters": hyperparameters,
                "compute_limit_hours": 10.0}  # fmt: skip
        if self.args.base_model:
            body["base_model"] = self.args.base_model
        job = self.call("POST", f"/projects/{slug}/training-jobs", json=body)
        label = "zero-shot (max_steps=0)" if hyperparameters.get("max_steps") == 0 else job_type
        console.print(f"{label}: job {job['id']}")
        job = watch_job(self.api, job["id"])
        if job["status"] != "succeeded":
            sys.exit(f"{label} job {job['id']} {job['status']}: {job.get('error')}")
        model: dict[str, Any] = self.call("GET", f"/model-versions/{job['model_version_ids'][0]}")
        compute = model["compute"]
        console.print(
            f"  version {model['version']}: {compute['steps']} steps, "
            f"{compute['train_seconds']:.0f} s training, "
            f"job {job['compute_seconds']:.0f} s in all"
        )
        return model

    def promote(self, slug: str, key: str, model: dict[str, Any], reranker: bool = False) -> None:
        self.call("POST", f"/model-versions/{model['id']}/promote", json={})
        wait_served(self.inference, slug, key, model["id"], reranker=reranker)

    def service_key(self, slug: str) -> str:
        me = self.call("GET", "/users/me")
        body = {"user_id": me["id"], "name": "quality bench", "role": "service", "project_id": slug}
        return str(self.call("POST", "/keys", json=body)["key"])

    def recommend_run(
        self, slug: str, key: str, asks: dict[str, dict[str, Any]], label: str
    ) -> dict[str, dict[str, float]]:
        """query id -> product -> score (K - rank) from /recommend for every ask."""
        run: dict[str, dict[str, float]] = {}
        headers = {"Authorization": f"Bearer {key}"}
        started = time.monotonic()
        with console.status(f"/recommend: {label}") as status:
            for i, (qid, ask) in enumerate(asks.items(), start=1):
                response = self.inference.post(
                    "/recommend", json={"project": slug, "k": K, **ask}, headers=headers
                )
                if response.status_code != 200:
                    sys.exit(f"/recommend for {qid!r} answered {response.status_code}: {response.text[:500]}")
                items = response.json()["items"]
                run[qid] = {item["product_id"]: float(K - rank) for rank, item in enumerate(items)}
                if i % 100 == 0:
                    status.update(f"/recommend: {label} {i}/{len(asks)}")
        console.print(f"  {label}: {len(asks)} requests in {time.monotonic() - started:.1f} s")
        return run

    def embed(self, slug: str, key: str, texts: list[str], batch: int = 64) -> np.ndarray:
        """Normalised embeddings of texts from the project's deployed retriever (/v1/embeddings)."""
        headers = {"Authorization": f"Bearer {key}"}
        rows: list[list[float]] = []
        with console.status("/v1/embeddings") as status:
            for start in range(0, len(texts), batch):
                body = {"model": slug, "input": [t[:2000] or "-" for t in texts[start : start + batch]]}
                response = self.inference.post("/v1/embeddings", json=body, headers=headers)
                if response.status_code != 200:
                    sys.exit(f"/v1/embeddings answered {response.status_code}: {response.text[:500]}")
                rows.extend(item["embedding"] for item in response.json()["data"])
                status.update(f"/v1/embeddings {len(rows):,}/{len(texts):,}")
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _metrics(run: dict[str, dict[str, float]], examples: Examples) -> dict[str, float]:
    return ranking_metrics(
        run, examples.valid.grades, k=K, recall_ks=(K,), relevant_from=examples.relevant_from
    )


def _table(title: str, rows: dict[str, dict[str, float]], keys: list[tuple[str, str]]) -> Table:
    table = Table("model", *(label for label, _ in keys), title=title)
    for name, values in rows.items():
        table.add_row(name, *(f"{values[key]:.4f}" if key in values else "-" for _, key in keys))
    return table


def random_order(examples: Examples, shuffles: int = 20) -> dict[str, float]:
    """The rerank view's floor: each query's judged products in random order (the mean of ``shuffles``
    seeded shuffles); its ceiling is 1. How much room the judged lists leave between the two is what
    a model's margin over the baselines can be measured in."""
    rng = np.random.default_rng(42)
    found: list[dict[str, float]] = []
    for _ in range(shuffles):
        run = {
            query: dict(zip(judged, rng.permutation(len(judged)).astype(float).tolist(), strict=True))
            for query, judged in examples.valid.grades.items()
        }
        found.append(ranking_metrics(run, examples.valid.grades, k=K, relevant_from=examples.relevant_from))
    return {key: float(np.mean([row[key] for row in found])) for key in ("ndcg@10", "mrr@10")}


def relevance(bench: Bench, slug: str, version: dict[str, Any], examples: Examples) -> dict[str, Any]:
    args = bench.args
    zero = bench.train(slug, version["id"], "bi_encoder", {**args.hp, "max_steps": 0})
    bi = bench.train(slug, version["id"], "bi_encoder", _bi_encoder_hp(args))
    cross_hp = (
        dict(args.hp)
        if args.defaults
        else {"learning_rate": args.cross_learning_rate, **args.hp, "max_steps": args.cross_steps}
    )
    cross = bench.train(slug, version["id"], "cross_encoder", cross_hp)
    rerank = {
        "judged products in random order (reference)": random_order(examples),
        "BM25": bi["baselines"]["bm25"],
        "zero-shot": zero["metrics"],
        "fine-tuned bi-encoder": bi["metrics"],
        "fine-tuned cross-encoder": cross["metrics"],
    }
    key = bench.service_key(slug)
    queries = dict(list(examples.valid.queries.items())[: args.max_queries or None])
    asks = {qid: {"query": text[:1000]} for qid, text in queries.items()}
    catalog: dict[str, dict[str, float]] = {}
    bench.promote(slug, key, zero)
    catalog["BM25"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, retrieval="lexical"), "BM25"), examples
    )
    catalog["zero-shot dense"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, retrieval="dense"), "zero-shot dense"), examples
    )
    catalog["zero-shot hybrid"] = _metrics(bench.recommend_run(slug, key, asks, "zero-shot hybrid"), examples)
    bench.promote(slug, key, bi)
    catalog["fine-tuned dense"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, retrieval="dense"), "fine-tuned dense"), examples
    )
    catalog["fine-tuned hybrid"] = _metrics(
        bench.recommend_run(slug, key, asks, "fine-tuned hybrid"), examples
    )
    bench.promote(slug, key, cross, reranker=True)
    catalog["fine-tuned hybrid + cross-encoder top 20"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, rerank=True), "hybrid + rerank"), examples
    )
    size = bi["metrics"].get("catalog_size") or len(examples.product_text)
    console.print(_table(
        f"Rerank view: {rerank['BM25'].get('queries', len(examples.valid.queries))} validation queries, "
        "their judged products", rerank, [("nDCG@10", "ndcg@10"), ("MRR@10", "mrr@10")]))  # fmt: skip
    console.print(_table(
        f"Catalog view through /recommend: {len(asks)} validation queries, {size:,} products",
        catalog, [("nDCG@10", "ndcg@10"), ("Recall@10", "recall@10")]))  # fmt: skip
    best_rerank = max(rerank["BM25"]["ndcg@10"], rerank["zero-shot"]["ndcg@10"])
    ours_rerank = max(
        rerank["fine-tuned bi-encoder"]["ndcg@10"], rerank["fine-tuned cross-encoder"]["ndcg@10"]
    )
    ours_catalog = max(
        catalog["fine-tuned hybrid"]["ndcg@10"],
        catalog["fine-tuned hybrid + cross-encoder top 20"]["ndcg@10"],
    )
    _goal(
        "catalog: the fine-tuned hybrid's nDCG@10 >= 1.2x BM25's",
        ours_catalog / max(catalog["BM25"]["ndcg@10"], 1e-9),
        1.2,
        "x",
    )
    _goal(
        "rerank: the best fine-tuned nDCG@10 >= the best baseline's + 0.01",
        ours_rerank - best_rerank,
        0.01,
        "",
    )
    versions = {"zero_shot": zero["id"], "bi_encoder": bi["id"], "cross_encoder": cross["id"]}
    return {
        "rerank": rerank,
        "catalog": catalog,
        "queries": len(asks),
        "catalog_size": size,
        "versions": versions,
    }


def from_feedback(bench: Bench, slug: str, version: dict[str, Any], examples: Examples) -> dict[str, Any]:
    """Zero-shot, then a bi-encoder trained on nothing but simulated shoppers' feedback (module doc)."""
    import asyncio

    from services.cli.simulator import ClickModel, SimulationOptions, simulate
    from shared.datasets.storage import read_table

    args = bench.args
    zero = bench.train(slug, version["id"], "bi_encoder", {**args.hp, "max_steps": 0})
    key = bench.service_key(slug)
    queries = dict(list(examples.valid.queries.items())[: args.max_queries or None])
    asks = {qid: {"query": text[:1000]} for qid, text in queries.items()}
    bench.promote(slug, key, zero)
    catalog = {
        "zero-shot hybrid": _metrics(bench.recommend_run(slug, key, asks, "zero-shot hybrid"), examples)
    }
    catalog["zero-shot dense"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, retrieval="dense"), "zero-shot dense"), examples
    )
    bench.call("PATCH", f"/projects/{slug}", json={"exploration_percent": args.explore})
    train = read_table(object_store(bench.settings), version["tables"], "relevance", split="train")
    judged: dict[str, dict[str, float]] = {}
    for query, product, grade in zip(
        train["query"].to_pylist(), train["product_id"].to_pylist(), train["grade"].to_pylist(), strict=True
    ):
        judged.setdefault(query, {})[product] = float(grade)
    started = dt.datetime.now(dt.UTC)
    time.sleep(3)  # inference hears of the exploration share on Redis
    options = SimulationOptions(
        inference_url=str(bench.inference.base_url), key=key, project=slug, judgments=judged,
        searches=args.feedback, shoppers=8, seed=7,
        model=ClickModel(examine_decay=args.examine_decay, max_grade=float(max(train["grade"].to_pylist()))),
    )  # fmt: skip
    with console.status(f"{args.feedback:,} simulated searches over {len(judged):,} training queries"):
        report = asyncio.run(simulate(options))
    console.print(
        f"  {len(report.searches):,} searches in {report.seconds:.0f} s: {report.clicks:,} clicks, "
        f"{report.carts:,} carts, {report.purchases:,} purchases ({report.failed} failed)"
    )
    time.sleep(3)  # the last impressions are written in batches
    job = bench.call(
        "POST", f"/projects/{slug}/feedback-jobs",
        json={"from": started.isoformat(), "to": dt.datetime.now(dt.UTC).isoformat(), "split_seed": 7,
              "min_impressions": args.min_impressions, "sequences": False},
    )  # fmt: skip
    job = watch_job(bench.api, job["id"])
    if job["status"] != "succeeded":
        sys.exit(f"feedback job {job['id']} {job['status']}: {job.get('error')}")
    [written] = job["result"]["dataset_versions"]
    graded = job["result"]["relevance"]
    console.print(
        f"  feedback: {written['rows']:,} graded pairs ({graded['pairs_seen']:,} shown), "
        f"job {job['compute_seconds']:.0f} s"
    )
    tuned = bench.train(
        slug, written["dataset_version_id"], "bi_encoder", {**args.hp, "max_steps": args.steps}
    )
    bench.promote(slug, key, tuned)
    bench.call("PATCH", f"/projects/{slug}", json={"exploration_percent": 0})
    time.sleep(3)
    catalog["feedback-tuned hybrid"] = _metrics(
        bench.recommend_run(slug, key, asks, "feedback hybrid"), examples
    )
    catalog["feedback-tuned dense"] = _metrics(
        bench.recommend_run(slug, key, _with(asks, retrieval="dense"), "feedback dense"), examples
    )
    size = len(examples.product_text)
    console.print(_table(
        f"Catalog view through /recommend: {len(asks)} held validation queries, {size:,} products; "
        f"the tuned model saw only {args.feedback:,} simulated searches' feedback",
        catalog, [("nDCG@10", "ndcg@10"), ("Recall@10", "recall@10")]))  # fmt: skip
    return {
        "catalog": catalog,
        "queries": len(asks),
        "catalog_size": size,
        "searches": len(report.searches),
        "clicks": report.clicks,
        "feedback": {"rows": written["rows"], **graded},
        "versions": {"zero_shot": zero["id"], "feedback_bi_encoder": tuned["id"]},
    }


def sequences(bench: Bench, slug: str, version: dict[str, Any], examples: Examples) -> dict[str, Any]:
    args = bench.args
    zero = bench.train(slug, version["id"], "bi_encoder", {**args.hp, "max_steps": 0})
    bi = bench.train(slug, version["id"], "bi_encoder", _bi_encoder_hp(args))
    key = bench.service_key(slug)
    users = list(examples.valid.histories)[: args.max_queries or None]
    histories = {u: examples.valid.histories[u] for u in users}
    # popularity: how often each item was bought in the training split, history excluded per user
    counts: Counter[str] = Counter()
    for _, item, _ in examples.train:
        counts[item] += 1
    ranked = [item for item, _ in counts.most_common()]
    popularity: dict[str, dict[str, float]] = {}
    for user, history in histories.items():
        seen = set(history)
        top = [item for item in ranked[: K + len(seen)] if item not in seen][:K]
        popularity[user] = {item: float(K - rank) for rank, item in enumerate(top)}
    results = {"popularity": _metrics(popularity, examples)}
    asks = {u: {"history": h[-1000:]} for u, h in histories.items()}
    bench.promote(slug, key, zero)
    lexical = {
        u: {"query": history_text(h, examples.product_text)[:1000] or "-", "history": h[-1000:],
            "retrieval": "lexical"}
        for u, h in histories.items()
    }  # fmt: skip
    results["BM25 (history titles)"] = _metrics(bench.recommend_run(slug, key, lexical, "BM25"), examples)
    results["zero-shot (latest items as one text)"] = _metrics(
        bench.recommend_run(slug, key, asks, "zero-shot"), examples
    )
    items = list(examples.product_text)
    vectors = bench.embed(slug, key, [examples.product_text[i] for i in items])
    results["zero-shot, recency-weighted item mean"] = _metrics(
        recency_weighted(vectors, items, examples, users), examples
    )
    bench.promote(slug, key, bi)
    results["fine-tuned bi-encoder"] = _metrics(bench.recommend_run(slug, key, asks, "fine-tuned"), examples)
    console.print(_table(
        f"Next item through /recommend: {len(users)} validation users, {len(examples.product_text):,} items, "
        "history excluded", results, [("Recall@10", "recall@10"), ("nDCG@10", "ndcg@10")]))  # fmt: skip
    best = max(m["recall@10"] for name, m in results.items() if name != "fine-tuned bi-encoder")
    _goal(
        "next item: the fine-tuned Recall@10 >= 1.2x the best baseline's",
        results["fine-tuned bi-encoder"]["recall@10"] / max(best, 1e-9),
        1.2,
        "x",
    )
    return {"next_item": results, "users": len(users), "items": len(examples.product_text),
            "trainer": {"zero_shot": zero["metrics"], "bi_encoder": bi["metrics"]},
            "versions": {"zero_shot": zero["id"], "bi_encoder": bi["id"]}}  # fmt: skip


def _bi_encoder_hp(args: argparse.Namespace) -> dict[str, Any]:
    """The bi-encoder's hyperparameters: the platform's defaults with --defaults, else --steps."""
    return dict(args.hp) if args.defaults else {**args.hp, "max_steps": args.steps}


def print_header() -> None:
    """When, on what, and the command: the line a bench's output starts with."""
    console.print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; python {' '.join(sys.argv)}"
    )


def _goal(name: str, measured: float, goal: float, unit: str) -> None:
    verdict = "met" if measured >= goal else "NOT met"
    console.print(f"goal, {name}: measured {measured:.3f}{unit} against {goal:g}{unit}: {verdict}")


def recency_weighted(
    item_vectors: np.ndarray, items: list[str], examples: Examples, users: list[str]
) -> dict[str, dict[str, float]]:
    """Zero-shot over the recency-weighted history: each item of the history embedded on its own, the
    user the mean weighted RECENCY_DECAY ** age (newest 1), scored against every item, history excluded."""
    valid = examples.valid
    position = {item: i for i, item in enumerate(items)}
    user_vectors = np.zeros((len(users), item_vectors.shape[1]), dtype=np.float32)
    for row, user in enumerate(users):
        known = [position[p] for p in valid.histories[user] if p in position]
        weights = RECENCY_DECAY ** np.arange(len(known) - 1, -1, -1, dtype=np.float32)
        user_vectors[row] = weights @ item_vectors[known]
    run = dense_top_k(users, user_vectors, items, item_vectors, CATALOG_DEPTH, valid.exclude)
    # a user none of whose history is in the catalog gets no recommendation
    return {u: run[u] if user_vectors[row].any() else {} for row, u in enumerate(users)}


def _with(asks: dict[str, dict[str, Any]], **extra: Any) -> dict[str, dict[str, Any]]:
    return {qid: {**ask, **extra} for qid, ask in asks.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="The data: a file, or a folder of a public format's files.")
    parser.add_argument(
        "--format", required=True, help="homedepot, esci, wands, unisrec, csv, jsonl, parquet."
    )
    parser.add_argument("--kind", help="What a csv/jsonl/parquet file holds (relevance or sequences).")
    parser.add_argument(
        "--catalog", type=Path, help="A catalog file to import first (csv/jsonl/parquet data)."
    )
    parser.add_argument("--steps", type=int, default=200, help="Optimiser steps of the bi-encoder.")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="Train with the platform's default hyperparameters (one epoch), as a user who sets none "
        "would; --steps, --cross-steps and --cross-learning-rate are then not used.",
    )
    parser.add_argument("--cross-steps", type=int, default=200, help="Optimiser steps of the cross-encoder.")
    parser.add_argument(
        "--cross-learning-rate",
        type=float,
        default=1e-4,
        help="The cross-encoder's (its head starts untrained).",
    )
    parser.add_argument("--set", dest="hp", action="append", type=hyperparameter, default=[],
                        help="Another hyperparameter of every job, NAME=VALUE (repeatable).")  # fmt: skip
    parser.add_argument("--base-model", help="A local folder or hub id (default MiniLM).")
    parser.add_argument("--max-queries", type=int, help="Ask /recommend for at most this many (default all).")
    parser.add_argument("--project", help="The project slug (default quality-<format>-<time>).")
    parser.add_argument("--api-url", help="Default http://HOST:API_PORT from the settings.")
    parser.add_argument("--inference-url", help="Default http://HOST:INFERENCE_PORT from the settings.")
    parser.add_argument("--api-key", help="An admin key (default RECFORGE_API_KEY, else a new one).")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    parser.add_argument("--feedback", type=int, help="Train on N simulated searches' feedback instead.")
    parser.add_argument("--explore", type=float, default=20, help="Exploration percent while simulating.")
    parser.add_argument("--examine-decay", type=float, default=1.0, help="Simulated position bias.")
    parser.add_argument("--min-impressions", type=int, default=10, help="The feedback job's threshold.")
    args = parser.parse_args(argv)
    args.hp = dict(args.hp)
    if not args.path.exists():
        parser.error(f"{args.path}: no such file or folder")
    started = time.monotonic()
    bench = Bench(args)
    print_header()
    slug = bench.project()
    version = bench.data(slug)
    kind = DatasetKind(version["kind"])
    catalog_tables = None
    if "catalog" not in version["tables"]:
        datasets = bench.call("GET", f"/projects/{slug}/datasets")["items"]
        catalog = next(d for d in datasets if d["kind"] == "catalog")
        catalog_tables = bench.call("GET", f"/dataset-versions/{catalog['latest_version']['id']}")["tables"]
    examples = load(object_store(bench.settings), kind, version["tables"], catalog_tables)
    run: Callable[[Bench, str, dict[str, Any], Examples], dict[str, Any]]
    run = sequences if kind == DatasetKind.sequences else from_feedback if args.feedback else relevance
    results = run(bench, slug, version, examples)
    results.update(project=slug, dataset_version=version["id"], seconds=round(time.monotonic() - started))
    console.print(f"{slug}: done in {results['seconds'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
