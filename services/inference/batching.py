"""Dynamic micro-batching: concurrent requests to one model are coalesced into one run.

Requests wait in a bounded queue (counted in items, so memory has a ceiling); a full queue, or one
holding more than `max_delay_ms` of work at the model's recent speed, refuses new work with
`Overloaded` (HTTP 429) instead of growing, so admitted requests keep a bounded wait. One task per
model takes what is queued, up to `max_batch` items, and runs it in a worker thread, so the event loop
never blocks on onnxruntime; what arrives while a batch runs forms the next one (continuous batching).
A model that is idle runs a request at once: `max_wait_ms`, a wait for a batch to fill, applies only
while the model is busy (its last batch ended less than `max_wait_ms` ago), where a fuller batch can
cost little more than one request. A request larger than `max_batch` runs as one batch of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.inference import timing
from shared.errors import TooManyRequests

log = logging.getLogger("recforge.inference")

In = TypeVar("In")
Out = TypeVar("Out")


class Overloaded(TooManyRequests):
    """The model's queue is full: the client should retry after a short pause (429, Retry-After)."""

    error = "overloaded"


@dataclass
class _Request(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[list[Out]]
    queued_at: float = field(default_factory=time.perf_counter)
    ran: tuple[float, float] = (0.0, 0.0)  # when its batch's run started and ended
    split: dict[str, float] = field(default_factory=dict)  # the run's parts (split_run), in seconds


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        max_delay_ms: float | None = None,
        observe: Callable[[str, int, int], None] | None = None,
        split_run: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_delay_s = max_delay_ms / 1000 if max_delay_ms else None
        self._rate: float | None = None  # items per second of recent runs (moving average)
        self._last_end = -float("inf")  # time.perf_counter() when the last batch ended
        self._observe = observe  # (name, batch size, queue depth) after each run
        self._split_run = split_run  # the last run's parts (say, tokenize), for the request's stages
        self._queue: deque[_Request[In, Out]] = deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")

    async def close(self) -> None:
        """Stop taking work; requests already queued still run."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, items: Sequence[In], stage: str = "model") -> list[Out]:
        """Run ``items`` in the next batch that has room. The request's Server-Timing gets the wait in
        the queue (``{stage}_queue``) and its batch's run (``{stage}_run``, less the parts
        ``split_run`` names, each ``{stage}_{part}``)."""
        if self._closed:
            raise Overloaded(f"{self.name} is being replaced; retry")
        if not items:
            return []
        if self._queued_items > 0:
            if self._queued_items + len(items) > self.max_queue:
                raise Overloaded(
                    f"{self.name} is at capacity ({self._queued_items} items queued): retry after the "
                    "Retry-After seconds, or send fewer items per request"
                )
            if self.max_delay_s is not None and self._rate:
                wait = (self._queued_items + len(items)) / self._rate
                if wait > self.max_delay_s:
                    raise Overloaded(
                        f"{self.name} is at capacity (about {wait * 1000:.0f} ms of work queued, more than "
                        f"the {self.max_delay_s * 1000:.0f} ms allowed): retry after the Retry-After "
                        "seconds, or send fewer items per request"
                    )
        self.start()
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        request = _Request(items, future)
        self._queue.append(request)
        self._queued_items += len(items)
        self._arrived.set()
        results = await future
        started, ended = request.ran
        timing.add(f"{stage}_queue", started - request.queued_at)
        timing.add(f"{stage}_run", ended - started - sum(request.split.values()))
        for part, seconds in request.split.items():
            timing.add(f"{stage}_{part}", seconds)
        return results

    def _take(self) -> list[_Request[In, Out]]:
        taken: list[_Request[In, Out]] = []
        size = 0
        while self._queue:
            request = self._queue[0]
            if request.future.cancelled():  # the client went away before its turn
                self._queue.popleft()
                self._queued_items -= len(request.items)
                continue
            if taken and size + len(request.items) > self.max_batch:
                break
            self._queue.popleft()
            self._queued_items -= len(request.items)
            taken.append(request)
            size += len(request.items)
        return taken

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            busy = time.perf_counter() - self._last_end < self.max_wait_s
            if busy and self._queued_items < self.max_batch:
                deadline = self._queue[0].queued_at + self.max_wait_s
                while self._queued_items < self.max_batch and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), remaining)
            batch = self._take()
            if not batch:
                continue
            flat = [item for request in batch for item in request.items]
            try:
                started = time.perf_counter()
                try:
                    results = await asyncio.to_thread(self._run, flat)
                finally:
                    self._last_end = time.perf_counter()
                rate = len(flat) / max(self._last_end - started, 1e-6)
                split = self._split_run() if self._split_run is not None else {}
                for request in batch:
                    request.ran, request.split = (started, self._last_end), split
                self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
            except Exception as exc:  # every waiting request hears of it; the loop goes on
                log.exception("batch failed", extra={"model": self.name, "size": len(flat)})
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            if self._observe is not None:
                self._observe(self.name, len(flat), self._queued_items)
            start = 0
            for request in batch:
                end = start + len(request.items)
                if not request.future.done():
                    request.future.set_result(list(results[start:end]))
                start = end
