"""Serving latency and throughput of a running RecForge inference service, with peers side by side.

    python bench/serving.py --project homedepot --api-key $SERVICE_KEY \\
        --queries ../shared/data/homedepot/relevance_dev.csv

Needs a stack with a deployed retriever for the project (and a reranker for the rerank row). Measures
`/recommend` by query at concurrency 1 (p50/p95/p99), with `rerank: true` when a reranker is deployed,
`/score` of 100 products, and `/v1/embeddings` throughput at several concurrencies with one short
title per request. The same load generator then drives the peers, started by this script on the same
machine: a naive FastAPI + torch eager server (bench/naive_server.py) and, when `--infinity` names an
`infinity_emb` executable, infinity-emb with `--engine optimum`. Ratios are printed beside the figures.
The load generator (httpx, asyncio) shares the machine's cores with the servers, as in production
benchmarks on one box; the ratios compare like with like.

`--impression-logging` starts two inference services of its own (`recforge inference`, the stack's
database and models, the same settings but RECFORGE_IMPRESSION_LOGGING) and measures `/recommend` on
both side by side: at c=1 each query goes to both back to back (which one first alternating), so both
see the same moments of the machine; throughput at c=8 in alternating windows."""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

NAIVE_SERVER = Path(__file__).with_name("naive_server.py")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# The goals for this 2-core machine, printed beside the measurements.
LATENCY_GOALS = {
    "/recommend by query": {"p50": 10.0, "p99": 30.0},
    "/recommend + rerank top 20": {"p50": 80.0},
}
THROUGHPUT_GOALS = {"infinity-emb": 1.5, "naive torch": 3.0}  # ours / theirs at the highest concurrency
OVERLOAD_GOAL = 3.0  # admitted p99 under twice the servable load, over the unloaded p99


def load_queries(path: Path | None, count: int, seed: int = 7) -> list[str]:
    if path is None:
        return ["cordless drill", "ceiling fan", "deck paint", "toilet", "garden hose", "led bulb"] * (
            count // 6 + 1
        )
    with path.open(encoding="latin-1", newline="") as handle:
        queries = sorted({row["search_term"] for row in csv.DictReader(handle)})
    random.Random(seed).shuffle(queries)
    return queries[:count]


async def latency(
    client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> dict[str, float]:
    for body in bodies[:10]:  # warm-up
        (await client.post(url, json=body, headers=headers)).raise_for_status()
    took = []
    for body in bodies:
        started = time.perf_counter()
        response = await client.post(url, json=body, headers=headers)
        took.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return {
        "p50": _percentile(took, 50),
        "p95": _percentile(took, 95),
        "p99": _percentile(took, 99),
        "n": len(took),
    }


async def throughput(
    base: str,
    path: str,
    texts: list[str],
    model: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    done = 0
    refused = 0
    took: list[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker(n: int) -> None:
            nonlocal done, refused
            i = n
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(
                    path, json={"input": texts[i % len(texts)], "model": model}, headers=headers
                )
                i += concurrency
                if response.status_code == 429:
                    refused += 1
                    continue
                response.raise_for_status()
                took.append((time.perf_counter() - started) * 1000)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "per_s": done / elapsed,
        "p50": statistics.median(took) if took else 0.0,
        "p99": _percentile(took, 99) if took else 0.0,
        "refused": refused,
    }


async def open_loop(
    base: str, texts: list[str], model: str, headers: dict[str, str], rate: float, seconds: float
) -> dict[str, float]:
    """Requests arrive at a fixed rate whatever the server does (as shoppers do); returns the share
    refused with 429 and the latency of the admitted ones."""
    took: list[float] = []
    refused = 0
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(text: str) -> None:
            nonlocal refused
            started = time.perf_counter()
            response = await client.post(
                "/v1/embeddings", json={"input": text, "model": model}, headers=headers
            )
            if response.status_code == 429:
                refused += 1
                return
            response.raise_for_status()
            took.append((time.perf_counter() - started) * 1000)

        tasks = []
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(texts[i % len(texts)])))
        await asyncio.gather(*tasks)
    total = refused + len(took)
    return {
        "refused_share": refused / total if total else 0.0,
        "p50": statistics.median(took) if took else 0.0,
        "p99": _percentile(took, 99) if took else 0.0,
    }


async def recommend_throughput(
    base: str, bodies: list[dict[str, Any]], headers: dict[str, str], concurrency: int, seconds: float
) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker(n: int) -> None:
            nonlocal done
            i = n
            while time.perf_counter() < stop:
                response = await client.post("/recommend", json=bodies[i % len(bodies)], headers=headers)
                i += concurrency
                if response.status_code != 429:
                    response.raise_for_status()
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        return done / (time.perf_counter() - started)


async def impression_logging(
    args: argparse.Namespace, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> None:
    """/recommend with impression logging on and off: two services started here, alike but for it.

    The machine's own drift (PostgreSQL's checkpoints, the other services, the scheduler) moves
    latencies by more than the 10% the comparison is after when the two are measured one after the
    other. So at c=1 each query goes to both services back to back, which one first alternating, and
    the percentiles of the two are compared over the same moments; a bootstrap over those pairs gives
    the ratios' 95% intervals. Throughput at c=8 alternates short windows. The logging-on service's
    /metrics then shows that its impressions were written, not dropped."""
    token = secrets.token_urlsafe(24)
    ports = {"on": args.on_port, "off": args.off_port}
    services = {}
    try:
        for name, port in ports.items():
            env = {
                **os.environ,
                "RECFORGE_IMPRESSION_LOGGING": "true" if name == "on" else "false",
                "RECFORGE_METRICS_TOKEN": token,
                "PYTHONPATH": str(PROJECT_ROOT),
            }
            command = [sys.executable, "-m", "services.cli", "inference", "--port", str(port)]
            services[name] = _start(command, port, env)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for _ in range(100):  # the new process loads the project's models
                    probe = await client.post("/recommend", json=bodies[0], headers=headers)
                    if probe.status_code == 200:
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise SystemExit(f"the logging-{name} service never answered: {probe.text[:300]}")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        took: dict[str, list[float]] = {"on": [], "off": []}
        rates: dict[str, list[float]] = {"on": [], "off": []}
        async with (
            httpx.AsyncClient(base_url=urls["on"], timeout=60) as on,
            httpx.AsyncClient(base_url=urls["off"], timeout=60) as off,
        ):
            clients = {"on": on, "off": off}
            for body in bodies[:20]:  # warm-up
                for client in clients.values():
                    (await client.post("/recommend", json=body, headers=headers)).raise_for_status()
            for i in range(args.rounds * len(bodies)):
                body = bodies[i % len(bodies)]
                for name in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    started = time.perf_counter()
                    response = await clients[name].post("/recommend", json=body, headers=headers)
                    took[name].append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
        for window in range(2 * args.rounds):
            for name in ("on", "off") if window % 2 == 0 else ("off", "on"):
                rates[name].append(
                    await recommend_throughput(urls[name], bodies, headers, 8, args.seconds / 2)
                )
        await asyncio.sleep(2 * 0.5 + 1)  # the writer's flush interval, twice, and a second
        written = _metric(urls["on"], token, "recforge_inference_impressions_written_total")
        dropped = _metric(urls["on"], token, "recforge_inference_impressions_dropped_total")
    finally:
        for process in services.values():
            process.terminate()
            process.wait(timeout=30)

    on_ms, off_ms = np.array(took["on"]), np.array(took["off"])
    pairs = len(on_ms)
    print(
        f"\n/recommend, impression logging on and off: {pairs} queries sent to both back to back "
        f"(c=1, order alternating), c=8 in {2 * args.rounds} alternating windows of {args.seconds / 2:g} s"
    )
    print(f"{'logging':10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'c=8 /s':>8}")
    for name, values in (("on", on_ms), ("off", off_ms)):
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        print(f"{name:10} {p50:8.2f} {p95:8.2f} {p99:8.2f} {statistics.median(rates[name]):8.1f}")
    ratios = {q: float(np.percentile(on_ms, q) / np.percentile(off_ms, q)) for q in (50, 99)}
    rng = np.random.default_rng(7)
    resampled = rng.integers(0, pairs, size=(1000, pairs))
    intervals = {
        q: np.percentile(
            np.percentile(on_ms[resampled], q, axis=1) / np.percentile(off_ms[resampled], q, axis=1),
            [2.5, 97.5],
        )
        for q in (50, 99)
    }
    met = all(ratio <= 1.1 for ratio in ratios.values())
    spans = ", ".join(
        f"p{q} {ratios[q]:.3f}x (95% {intervals[q][0]:.3f}-{intervals[q][1]:.3f})" for q in (50, 99)
    )
    throughput_ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(
        f"on / off: {spans}, c=8 throughput {throughput_ratio:.3f}x "
        f"(goal: latency within 10%: {'met' if met else 'NOT met'})"
    )
    print(f"the logging-on service wrote {written:.0f} impressions and dropped {dropped:.0f}")


def _metric(base: str, token: str, name: str) -> float:
    """A counter's total over its labels, from the service's /metrics."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _start(command: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code < 500:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited with {process.returncode} before answering on :{port}")
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"{command} did not answer on :{port} within 300 s")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8001", help="The inference service.")
    parser.add_argument("--project", required=True, help="Project id or slug with a deployed retriever.")
    parser.add_argument("--api-key", default=os.environ.get("RECFORGE_SERVICE_KEY"), help="A service key.")
    parser.add_argument("--queries", type=Path, help="A Home Depot CSV to sample queries and titles from.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per latency measurement.")
    parser.add_argument("--seconds", type=float, default=15, help="Duration of each throughput run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--naive-port", type=int, default=8010)
    parser.add_argument("--no-naive", action="store_true", help="Skip the naive torch server.")
    parser.add_argument("--infinity", help="Path of an `infinity_emb` executable to run side by side.")
    parser.add_argument("--infinity-model", help="The folder infinity-emb serves (an ONNX export of MiniLM).")
    parser.add_argument("--infinity-port", type=int, default=8011)
    parser.add_argument(
        "--impression-logging",
        action="store_true",
        help="Compare /recommend with impression logging on and off (two services started here).",
    )
    parser.add_argument("--on-port", type=int, default=8012, help="Port of the logging-on service.")
    parser.add_argument("--off-port", type=int, default=8013, help="Port of the logging-off service.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Passes over the queries in the on/off comparison (each query to both services per pass).",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help="Also offer twice the best throughput open-loop (needs a load generator that can: the "
        "httpx one on the servers' own cores cannot, see the README).",
    )
    args = parser.parse_args()
    if not args.api_key:
        raise SystemExit(
            "pass --api-key or set RECFORGE_SERVICE_KEY (recforge keys create --role service ...)"
        )
    headers = {"Authorization": f"Bearer {args.api_key}"}
    queries = load_queries(args.queries, max(args.requests, 500))
    titles = queries  # short texts of the same shape as the titles a shop embeds
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")

    bodies = [{"project": args.project, "query": q, "k": 10} for q in queries[: args.requests]]
    if args.impression_logging:
        await impression_logging(args, bodies, headers)
        return
    async with httpx.AsyncClient(base_url=args.url, timeout=60) as client:
        rows: list[tuple[str, dict[str, float]]] = [
            ("/recommend by query, c=1", await latency(client, "/recommend", bodies, headers))
        ]
        probe = await client.post("/recommend", json={**bodies[0], "rerank": True}, headers=headers)
        if probe.status_code == 200:
            rows.append(
                (
                    "/recommend + rerank top 20, c=1",
                    await latency(client, "/recommend", [{**b, "rerank": True} for b in bodies], headers),
                )
            )
        else:
            print(f"rerank not measured: {probe.status_code} {probe.text[:120]}")
        first = await client.post("/recommend", json={**bodies[0], "k": 100}, headers=headers)
        products = [item["product_id"] for item in first.json()["items"]]
        score_bodies = [{"project": args.project, "query": q, "product_ids": products} for q in queries[:100]]
        rows.append(
            (f"/score {len(products)} products, c=1", await latency(client, "/score", score_bodies, headers))
        )
    print("\nlatency (ms)")
    print(f"{'':40} {'p50':>8} {'p95':>8} {'p99':>8}   goal")
    for name, row in rows:
        goal = LATENCY_GOALS.get(name.split(",")[0])
        verdict = ""
        if goal:
            met = all(row[key] <= limit for key, limit in goal.items())
            verdict = ", ".join(f"{key} <= {limit:g}" for key, limit in goal.items()) + (
                ": met" if met else ": NOT met"
            )
        print(f"{name:40} {row['p50']:8.2f} {row['p95']:8.2f} {row['p99']:8.2f}   {verdict}")

    servers: list[tuple[str, str, str, dict[str, str]]] = [("recforge", args.url, args.project, headers)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        if not args.no_naive:
            script = str(NAIVE_SERVER)
            env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
            started.append(
                _start([sys.executable, script, "--port", str(args.naive_port)], args.naive_port, env)
            )
            servers.append(("naive torch", f"http://127.0.0.1:{args.naive_port}", "naive", {}))
        if args.infinity:
            if not args.infinity_model:
                raise SystemExit("--infinity needs --infinity-model (a folder with an ONNX export)")
            command = [args.infinity, "v2", "--model-id", args.infinity_model, "--engine", "optimum",
                       "--port", str(args.infinity_port), "--url-prefix", "/v1"]  # fmt: skip
            started.append(_start(command, args.infinity_port))
            servers.append(
                ("infinity-emb", f"http://127.0.0.1:{args.infinity_port}", args.infinity_model, {})
            )
        results: dict[str, dict[int, dict[str, float]]] = {}
        for name, base, model, auth in servers:
            results[name] = {}
            for c in args.concurrency:
                results[name][c] = await throughput(
                    base, "/v1/embeddings", titles, model, auth, c, args.seconds
                )
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)
    print("\n/v1/embeddings, one short text per request: texts/s (p50 ms, p99 ms)")
    print(f"{'server':16}" + "".join(f"{'c=' + str(c):>26}" for c in args.concurrency))
    for name, by_c in results.items():
        cells = "".join(
            f"{by_c[c]['per_s']:>10.1f} ({by_c[c]['p50']:6.1f}, {by_c[c]['p99']:6.1f})"
            for c in args.concurrency
        )
        print(f"{name:16}{cells}")
    ours = results["recforge"]
    for name, by_c in results.items():
        if name == "recforge":
            continue
        ratios = ", ".join(
            f"c={c}: {ours[c]['per_s'] / by_c[c]['per_s']:.2f}x" for c in args.concurrency if by_c[c]["per_s"]
        )
        top = max(args.concurrency)
        goal = THROUGHPUT_GOALS.get(name)
        verdict = ""
        if goal and by_c[top]["per_s"]:
            met = ours[top]["per_s"] / by_c[top]["per_s"] >= goal
            verdict = f"  (goal at c={top}: >= {goal:g}x: {'met' if met else 'NOT met'})"
        print(f"recforge / {name}: {ratios}{verdict}")
    if not args.overload:
        print("\noverload: not measured (pass --overload with a load generator that can offer the rate)")
        return
    best = max(ours.values(), key=lambda row: row["per_s"])["per_s"]
    unloaded = await throughput(args.url, "/v1/embeddings", titles, args.project, headers, 1, args.seconds)
    overload = await open_loop(args.url, titles, args.project, headers, 2 * best, args.seconds)
    print(
        f"\noverload: {2 * best:.0f} requests/s (twice the best throughput above) on /v1/embeddings: "
        f"{overload['refused_share']:.1%} answered 429; admitted p50 {overload['p50']:.1f} ms, "
        f"p99 {overload['p99']:.1f} ms = {overload['p99'] / unloaded['p99']:.1f}x the unloaded p99 "
        f"({unloaded['p99']:.1f} ms at c=1); goal <= {OVERLOAD_GOAL:g}x: "
        f"{'met' if overload['p99'] <= OVERLOAD_GOAL * unloaded['p99'] else 'NOT met'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
