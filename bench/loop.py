"""One turn of the continuous-learning loop on the sample shop, timed, with its CTR@10 before and after.

    recforge up --detach          # RECFORGE_PIPELINE_TICK_S=2 makes the controller quicker to notice
    export RECFORGE_API_KEY=$(recforge keys create --role admin)
    python bench/loop.py --project loop-bench

A new project gets the sample shop (its judgments split by query: the searched queries, and a golden
set no shopper searches for), a zero-shot MiniLM retriever in production and 20% exploration. Simulated
shoppers (services.cli.simulator) search it without pause from then on. Once --warmup searches are done a
pipeline is saved with a cron trigger on the next minute and a day's feedback window; from there the
loop runs by itself: feedback data, a fine-tune, the gate on the golden set, a 50% canary, the judge,
the promotion (or the rollback). The shoppers slow to --training-rate while the run collects, trains
and gates: on one small machine they share the cores with the trainer. The script only watches, then
reports each step's time, the time from the first shopper event to the promotion, and CTR@10 of the
version before (its traffic until the canary) and of the promoted version (its traffic after the
promotion, --after seconds of it), both from the online metrics of the simulator's traffic."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import random
import time
from typing import Any

import httpx

from services.cli.sample_shop import generate
from services.cli.simulator import Judgments, SimulationOptions, Traffic


def split(products: int, queries: int, seed: int, golden_share: float) -> tuple[str, str, str, Judgments]:
    """(catalog csv, searched judgments csv, golden csv, the searched judgments)."""
    shop = generate(products=products, queries=queries, seed=seed)
    names = sorted({q for q, _, _ in shop.judgments})
    random.Random(seed).shuffle(names)
    golden = set(names[: int(len(names) * golden_share)])
    header = "query,product_id,grade\n"

    def csv_of(rows: list[tuple[str, str, int]]) -> str:
        return header + "".join(f'"{q}",{p},{g}\n' for q, p, g in rows)

    searched_rows = [row for row in shop.judgments if row[0] not in golden]
    judged: Judgments = {}
    for q, p, g in searched_rows:
        judged.setdefault(q, {})[p] = float(g)
    golden_rows = [row for row in shop.judgments if row[0] in golden]
    return shop.catalog_csv(), csv_of(searched_rows), csv_of(golden_rows), judged


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(
            base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code != expect:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def upload(self, project: str, name: str, body: str, kind: str) -> str:
        files = [("file", (f"{name}.csv", io.BytesIO(body.encode())))]
        made = self.call(
            "POST", f"/projects/{project}/datasets", 201, files=files, data={"kind": kind, "name": name}
        )
        return str(made["version_id"])

    def wait_job(self, job_id: str) -> dict[str, Any]:
        while True:
            job: dict[str, Any] = self.call("GET", f"/training-jobs/{job_id}", 200)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if job["status"] != "succeeded":
                    raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
                return job
            time.sleep(1)

    def ctr(self, project: str, version: str, start: dt.datetime, end: dt.datetime) -> tuple[int, float]:
        params = {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "version": version,
            "bucket": "hour",
            "k": 10,
        }
        found = self.call("GET", f"/projects/{project}/online-metrics", 200, params=params)
        requests = sum(row["requests"] for row in found["rows"])
        clicks = sum(row["ctr_at_k"] * row["requests"] for row in found["rows"])
        return requests, clicks / requests if requests else 0.0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--api-url", default=f"http://127.0.0.1:{os.environ.get('RECFORGE_API_PORT', '8000')}"
    )
    parser.add_argument(
        "--inference-url", default=f"http://127.0.0.1:{os.environ.get('RECFORGE_INFERENCE_PORT', '8001')}"
    )
    parser.add_argument("--api-key", default=os.environ.get("RECFORGE_API_KEY"), help="An admin key.")
    parser.add_argument("--project", default="loop-bench")
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=8000, help="Searches before the pipeline is saved.")
    parser.add_argument("--steps", type=int, default=300, help="Fine-tuning steps of the pipeline's job.")
    parser.add_argument("--rate", type=float, default=40.0, help="Searches per second.")
    parser.add_argument(
        "--training-rate",
        type=float,
        default=2.0,
        help="Searches per second while the run trains and gates (shoppers and the trainer share the cores).",
    )
    parser.add_argument(
        "--min-requests", type=int, default=1500, help="Requests per arm the judge waits for."
    )
    parser.add_argument("--after", type=float, default=60.0, help="Seconds of traffic after the promotion.")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not args.api_key:
        raise SystemExit(
            "pass --api-key or set RECFORGE_API_KEY to an admin key (recforge keys create --role admin)"
        )
    return args


def prepare(api: Api, args: argparse.Namespace) -> tuple[str, str, str, str, Judgments]:
    """(project id, golden version, the zero-shot version in production, a service key, the searched
    judgments)."""
    catalog, searched, golden, judged = split(args.products, args.queries, args.seed, 0.2)
    body = {"slug": args.project, "name": "Loop bench", "budget": {"cpu_hours": 20}, "max_concurrent_jobs": 2}
    project = api.call("POST", "/projects", 201, json=body)["id"]
    api.call("PATCH", f"/projects/{project}", 200, json={"exploration_percent": 20})
    api.upload(project, "catalog", catalog, "catalog")
    judgments = api.upload(project, "judgments", searched, "relevance")
    golden_version = api.upload(project, "golden", golden, "relevance")
    zero = api.call(
        "POST", f"/projects/{project}/training-jobs", 202,
        json={"job_type": "bi_encoder", "dataset_version_id": judgments, "hyperparameters": {"max_steps": 0}},
    )  # fmt: skip
    zero_shot = str(api.wait_job(zero["id"])["model_version_ids"][0])
    api.call("POST", f"/model-versions/{zero_shot}/promote", 200)
    me = api.call("GET", "/users/me", 200)
    body = {"user_id": me["id"], "name": "bench", "role": "service", "project_id": project}
    key = api.call("POST", "/keys", 201, json=body)["key"]
    for _ in range(120):  # inference loads the promoted version
        if httpx.post(f"{args.inference_url}/recommend", json={"project": project, "query": "drill"},
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200:  # fmt: skip
            break
        time.sleep(1)
    return project, golden_version, zero_shot, key, judged


async def main() -> None:
    args = arguments()
    api = Api(args.api_url, args.api_key)
    project, golden_version, zero_shot, key, judged = await asyncio.to_thread(prepare, api, args)
    traffic = Traffic(
        SimulationOptions(
            inference_url=args.inference_url,
            key=key,
            project=project,
            judgments=judged,
            searches=500,
            shoppers=4,
            rate=args.rate,
            seed=args.seed,
        )
    )
    first_event = dt.datetime.now(dt.UTC)
    running = asyncio.create_task(traffic.run())
    print(f"traffic started at {first_event:%H:%M:%S}; {args.warmup} searches before the pipeline")
    while traffic.searches < args.warmup:  # noqa: ASYNC110 - polling a counter the traffic task moves
        await asyncio.sleep(1)
    tick = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).minute
    pipeline = await asyncio.to_thread(
        api.call,
        "POST",
        f"/projects/{project}/pipelines",
        201,
        json={
            "name": "learn-from-shoppers",
            "role": "retriever",
            "triggers": {"cron": f"{tick} * * * *"},
            "training": {
                "job_type": "bi_encoder",
                "feedback": {"days": 1, "min_impressions": 5},
                "hyperparameters": {"max_steps": args.steps},
            },
            "gate": {
                "golden_dataset_version_id": golden_version,
                "rules": [{"metric": "catalog_ndcg@10", "max_drop": 0.01}],
            },
            "rollout": {
                "canary_percent": 50,
                "min_requests": args.min_requests,
                "max_looks": 1,
                "alpha": 0.05,
                "max_duration_s": 3600,
            },
        },
    )
    print(f"pipeline {pipeline['id']} saved; its cron fires at minute {tick}")
    run: dict[str, Any] | None = None
    while True:
        await asyncio.sleep(2)
        runs = await asyncio.to_thread(
            api.call, "GET", f"/projects/{project}/pipeline-runs", 200, params={"pipeline_id": pipeline["id"]}
        )
        started = [r for r in runs["items"] if r["status"] != "skipped"]
        if started:
            run = started[0]  # newest first
            traffic.rate = args.rate if run["step"] in ("canary", "judge") else args.training_rate
            if run["status"] not in ("running", "awaiting_approval", "canary", "promoting"):
                break
    assert run is not None
    ended = dt.datetime.fromisoformat(run["finished_at"])
    await asyncio.sleep(args.after)
    traffic.stop()
    await running
    now = dt.datetime.now(dt.UTC)
    print(f"\nrun #{run['number']}: {run['status']} — {run['outcome']}")
    for step in run["steps"]:
        took = ""
        if step["started_at"] and step["finished_at"]:
            seconds = dt.datetime.fromisoformat(step["finished_at"]) - dt.datetime.fromisoformat(
                step["started_at"]
            )
            took = f"{seconds.total_seconds():7.1f} s"
        print(f"  {step['name']:9} {step['status']:10} {took}  {step['detail'] or ''}")
    canary_at = dt.datetime.fromisoformat(run["canary_started_at"]) if run["canary_started_at"] else ended
    before = await asyncio.to_thread(api.ctr, project, zero_shot, first_event, canary_at)
    print(
        f"\nfirst shopper event to the run's end: {(ended - first_event).total_seconds():.0f} s "
        f"({traffic.searches} searches in all, {traffic.failed} failed, "
        f"{traffic.events_refused} event batches refused)"
    )
    print(f"CTR@10 before, zero-shot {zero_shot[:8]}: {before[1]:.4f} over {before[0]} requests")
    if run["status"] == "promoted":
        promoted = run["links"]["candidate_version_id"]
        after = await asyncio.to_thread(api.ctr, project, promoted, ended, now)
        print(f"CTR@10 after, promoted {promoted[:8]}: {after[1]:.4f} over {after[0]} requests")
    if run.get("judge"):
        look = (
            run["judge"].get("looks", [{}])[-1]
            if run["judge"].get("looks")
            else run["judge"].get("latest", {})
        )
        print(f"the judge: {look.get('candidate')} vs {look.get('primary')}, p={look.get('p_better')}")


if __name__ == "__main__":
    asyncio.run(main())
