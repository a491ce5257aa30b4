"""Micro-batching: coalescing, bounded queues that refuse with 429, failures reach every caller."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from services.inference.batching import MicroBatcher, Overloaded


async def test_concurrent_requests_share_runs_and_keep_their_order() -> None:
    runs: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        runs.append(list(items))
        time.sleep(0.01)
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, name="t", max_batch=16, max_wait_ms=5)
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))
    await batcher.close()
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert max(len(r) for r in runs) <= 16 and len(runs) < 20  # coalesced, never over max_batch


def _slow_run(runs: list[list[int]]) -> Callable[[list[int]], list[int]]:
    """A model run of 50 ms that records each batch it ran."""

    def run(items: list[int]) -> list[int]:
        runs.append(list(items))
        time.sleep(0.05)
        return items

    return run


async def test_an_idle_model_runs_at_once_and_a_busy_one_fills_its_batches() -> None:
    runs: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher(_slow_run(runs), name="t", max_batch=8, max_wait_ms=100)
    started = time.perf_counter()
    assert await batcher.submit([1]) == [1]
    assert time.perf_counter() - started < 0.09  # idle: no 100 ms wait for a batch to fill
    # busy (its last batch just ended): the next request waits for company, which comes
    first = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(batcher.submit([3]))
    assert (await first, await second) == ([2], [3])
    assert runs[-1] == [2, 3]
    await batcher.close()


async def test_requests_arriving_during_a_run_form_the_next_batch() -> None:
    runs: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher(_slow_run(runs), name="t", max_batch=8, max_wait_ms=0)
    first = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.01)  # the first runs alone, at once
    rest = [asyncio.create_task(batcher.submit([i])) for i in range(1, 6)]
    assert [await first] + [await r for r in rest] == [[i] for i in range(6)]
    assert runs == [[0], [1, 2, 3, 4, 5]]
    await batcher.close()


async def test_a_full_queue_refuses_and_memory_stays_bounded() -> None:
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, name="t", max_batch=4, max_wait_ms=0, max_queue=8)
    first = asyncio.create_task(batcher.submit([0, 1, 2, 3]))  # taken into the (blocked) run
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(batcher.submit([i])) for i in range(8)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit([99])
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "1"
    assert batcher.queued_items == 8
    gate.set()
    assert await first == [0, 1, 2, 3]
    assert [await w for w in waiting] == [[i] for i in range(8)]
    await batcher.close()


async def test_a_failed_run_reaches_its_callers_and_the_loop_goes_on() -> None:
    def run(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad input")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, name="t", max_batch=1, max_wait_ms=0)
    with pytest.raises(ValueError, match="bad input"):
        await batcher.submit([-1])
    assert await batcher.submit([5]) == [5]
    await batcher.close()
    with pytest.raises(Overloaded):
        await batcher.submit([1])


async def test_work_beyond_the_delay_budget_is_refused() -> None:
    def run(items: list[int]) -> list[int]:
        time.sleep(0.02 * len(items))  # 50 items per second
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(
        run, name="t", max_batch=2, max_wait_ms=0, max_delay_ms=100
    )
    assert await batcher.submit([1, 2]) == [1, 2]  # learns the speed
    running = asyncio.create_task(batcher.submit([3, 4]))
    await asyncio.sleep(0.005)
    queued = [asyncio.create_task(batcher.submit([i])) for i in range(4)]  # 4 items: 80 ms of work
    await asyncio.sleep(0.001)
    with pytest.raises(
        Overloaded, match=r"t is at capacity .about \d+ ms of work queued, more than the 100 ms allowed"
    ):
        await batcher.submit([9, 9])  # would make 120 ms
    assert await running == [3, 4] and [await q for q in queued] == [[i] for i in range(4)]
    await batcher.close()


def _gated_app(gate: asyncio.Event) -> Any:
    from fastapi import FastAPI

    from services.inference.admission import AdaptiveConcurrency

    app = FastAPI()

    @app.post("/slow")
    async def slow() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(AdaptiveConcurrency, maximum=2, minimum=2, initial=2)
    return app


async def test_requests_beyond_the_ceiling_wait_in_line_then_answer_429() -> None:
    import httpx

    gate = asyncio.Event()
    app = _gated_app(gate)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        first = [asyncio.create_task(client.post("/slow")) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await client.post("/slow")  # waited its patience in line, no slot came free
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200
        waiting = asyncio.create_task(client.post("/slow"))
        await asyncio.sleep(0)
        gate.set()  # the two in flight end: the one in line gets a slot
        assert [r.status_code for r in await asyncio.gather(*first, waiting)] == [200, 200, 200]
        assert (await client.post("/slow")).status_code == 200


async def test_a_flood_is_refused_at_once_beyond_a_short_line() -> None:
    import httpx

    gate = asyncio.Event()
    app = _gated_app(gate)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        flood = [asyncio.create_task(client.post("/slow")) for _ in range(100)]  # none answered yet
        await asyncio.sleep(0.1)
        done = [t for t in flood if t.done()]
        # 2 in flight; a burst joined the line, then the flood showed: the line and the rest got 429
        assert len(done) == 100 - 2
        assert {t.result().status_code for t in done} == {429}
        gate.set()
        answered = [r.status_code for r in await asyncio.gather(*flood)]
        assert answered.count(200) == 2


async def test_a_bulk_route_has_no_adaptive_ceiling_only_the_most_in_flight() -> None:
    """/v1/embeddings' clients send batches for throughput: 32 at once all run (their model's
    queue-delay budget sheds the excess, not a ceiling that keeps batches small); past the most in
    flight, 429."""
    import httpx
    from fastapi import FastAPI

    from services.inference.admission import AdaptiveConcurrency

    gate = asyncio.Event()
    app = FastAPI()

    @app.post("/bulk")
    async def bulk() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    app.add_middleware(
        AdaptiveConcurrency, maximum=32, minimum=2, initial=2, routes=frozenset(), bulk=frozenset({"/bulk"})
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        running = [asyncio.create_task(client.post("/bulk")) for _ in range(32)]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in running)  # all 32 in flight, none refused or in line
        over = await client.post("/bulk")
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        gate.set()
        assert {r.status_code for r in await asyncio.gather(*running)} == {200}
