"""A small HTTP/1.1 load generator for RecForge's inference service, closed- or open-loop.

    python bench/loadgen.py --url http://127.0.0.1:8001/recommend --key $SERVICE_KEY \\
        --body '{"project": "demo-shop", "query": "drill"}' --rate 400 --seconds 10

Closed loop (`--concurrency N`): N clients, each sends its next request when the answer to its last
one arrived (after the pause a 429's Retry-After asks for, as a well-behaved client would); the
servable load is what they achieve. Open loop (`--rate R`): requests start at a fixed
rate whatever the server does, as shoppers arrive, each on an idle keep-alive connection or a new one;
latency counts from the moment a request was due, so a server that falls behind cannot hide it
(coordinated omission). Raw asyncio sockets and pre-built requests keep the generator's own cost per
request far below the server's, so on a shared machine it measures the server, not itself (httpx
could not offer twice the servable load on two cores).

Prints (or writes with `--out`) a JSON summary: requests by status, the share of 429 answers that
carried Retry-After, and percentiles of the latency of answered requests; `--records` adds one row per
request (start and end wall-clock times, status, the model version that answered)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Record:
    started: float  # wall clock, seconds (the moment the request was due, open loop)
    ended: float
    status: int  # 0: the connection failed
    retry_after: bool
    version: str | None
    pause: float = 0.0  # what Retry-After asked for, seconds


class Target:
    def __init__(self, url: str, key: str | None, bodies: list[bytes]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        if key:
            head += f"Authorization: Bearer {key}\r\n"
        self.requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def _version(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("model_version")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


class Generator:
    def __init__(self, target: Target, *, keep_versions: bool, max_connections: int = 1000) -> None:
        self.target = target
        self.keep_versions = keep_versions
        self.max_connections = max_connections
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()
        self.records: list[Record] = []
        self.open_connections = 0

    async def _connection(self) -> Connection:
        if not self.idle.empty():
            return self.idle.get_nowait()
        if self.open_connections < self.max_connections:
            self.open_connections += 1
            try:
                return await Connection.open(self.target)
            except OSError:
                self.open_connections -= 1
                raise
        return await self.idle.get()  # every connection is busy: wait (the latency counts from `due`)

    async def one(self, n: int, due_wall: float, due: float) -> Record:
        connection = None
        status, retry_after, version, pause = 0, False, None, 0.0
        try:
            connection = await self._connection()
            status, headers, body = await connection.exchange(
                self.target.requests[n % len(self.target.requests)]
            )
            retry_after = b"retry-after" in headers
            if retry_after:
                with contextlib.suppress(ValueError):
                    pause = float(headers[b"retry-after"])
            if status == 200 and self.keep_versions:
                version = _version(body)
            if headers.get(b"connection", b"").lower() == b"close":
                connection.close()
                self.open_connections -= 1
            else:
                self.idle.put_nowait(connection)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if connection is not None:
                connection.close()
                self.open_connections -= 1
        took = time.perf_counter() - due
        record = Record(due_wall, due_wall + took, status, retry_after, version, pause)
        self.records.append(record)
        return record

    async def open_loop(self, rate: float, seconds: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        begin, begin_wall = time.perf_counter(), time.time()
        for n in range(int(rate * seconds)):
            offset = n / rate
            delay = begin + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(n, begin_wall + offset, begin + offset))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def closed_loop(self, concurrency: int, seconds: float) -> None:
        stop = time.perf_counter() + seconds

        async def client(first: int) -> None:
            n = first
            while time.perf_counter() < stop:
                record = await self.one(n, time.time(), time.perf_counter())
                n += concurrency
                if record.pause:
                    await asyncio.sleep(min(record.pause, max(0.0, stop - time.perf_counter())))

        await asyncio.gather(*(client(i) for i in range(concurrency)))

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


def summarize(records: list[Record], seconds: float) -> dict[str, Any]:
    statuses = Counter(r.status for r in records)
    answered = [(r.ended - r.started) * 1000 for r in records if r.status == 200]
    refused = [r for r in records if r.status == 429]
    summary: dict[str, Any] = {
        "requests": len(records),
        "seconds": seconds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered_per_s": round(len(answered) / seconds, 1) if seconds else 0.0,
        "refused_share": round(len(refused) / len(records), 4) if records else 0.0,
        "refused_with_retry_after": all(r.retry_after for r in refused),
    }
    if answered:
        for q in (50, 90, 99):
            summary[f"p{q}_ms"] = round(float(np.percentile(answered, q)), 2)
        summary["max_ms"] = round(max(answered), 2)
    return summary


async def run(
    url: str,
    bodies: list[bytes],
    *,
    key: str | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    seconds: float = 10.0,
    keep_versions: bool = False,
) -> tuple[dict[str, Any], list[Record]]:
    if (rate is None) == (concurrency is None):
        raise ValueError("give a rate (open loop) or a concurrency (closed loop)")
    generator = Generator(Target(url, key, bodies), keep_versions=keep_versions)
    started = time.perf_counter()
    try:
        if rate is not None:
            await generator.open_loop(rate, seconds)
        else:
            assert concurrency is not None
            await generator.closed_loop(concurrency, seconds)
    finally:
        generator.close()
    elapsed = time.perf_counter() - started
    summary = summarize(generator.records, elapsed)
    summary["mode"] = (
        f"open loop, {rate:g} requests/s" if rate is not None else f"closed loop, c={concurrency}"
    )
    return summary, generator.records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="The endpoint, e.g. http://127.0.0.1:8001/recommend")
    parser.add_argument("--key", help="A service key (Authorization: Bearer)")
    bodies = parser.add_mutually_exclusive_group(required=True)
    bodies.add_argument("--body", help="One JSON request body")
    bodies.add_argument(
        "--bodies", type=Path, help="A file of JSON request bodies, one per line, used in turn"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="Open loop: requests started per second")
    mode.add_argument("--concurrency", type=int, help="Closed loop: clients, each waiting for its answer")
    parser.add_argument("--seconds", type=float, default=10.0, help="How long to offer the load (default 10)")
    parser.add_argument("--out", type=Path, help="Write the JSON summary here instead of printing it")
    parser.add_argument("--records", action="store_true", help="Include one row per request in the output")
    args = parser.parse_args(argv)
    if args.body is not None:
        lines = [args.body.encode()]
    else:
        lines = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    if not lines:
        parser.error("no request body given")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    summary, records = asyncio.run(
        run(
            args.url,
            lines,
            key=args.key,
            rate=args.rate,
            concurrency=args.concurrency,
            seconds=args.seconds,
            keep_versions=args.records,
        )
    )
    if args.records:
        summary["records"] = [[r.started, r.ended, r.status, r.version] for r in records]
    text = json.dumps(summary, indent=None if args.records else 2)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
