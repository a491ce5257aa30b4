"""What a request must pass before the service reads its body: an adaptive ceiling on the requests in
flight per route (beyond it, a wait in line or 429 with Retry-After), then the caller's key (401/403
unread). Health, readiness and metrics are never refused.

A fixed ceiling cannot bound the wait of admitted requests: set high, a burst queues in front of the
models and every answer is late; set low, a fast machine idles. Each route's ceiling adapts instead, as
the gradient limits of Netflix's concurrency-limits do: the median latency of the requests it answered
is compared with the service time with no queue (the latency of requests that ran alone); past 1.75
times that, the ceiling shrinks in proportion, and under 1.375 times it a ceiling in use grows by one.
The micro-batcher makes a few requests in flight cheaper per request than one, so the ceiling settles
where batching still pays and queueing does not yet: a few requests per core. The event loop's lag is
added to each latency, so a loop too busy to read new requests (where a queue forms that no counter
sees) lowers the ceiling too.

Who waits for a slot and who is refused depends on the flow: clients that wait for their answers (a
closed loop) cannot overload a service, only queue in front of it, so they wait; requests that arrive
faster than they are answered (an open flood) would make every answer late, so while they do, a request
that finds the ceiling reached is refused at once. Refusals are cheap (a header read, no body, no
model), so the answered requests keep their latency when offered far more than the service can serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.inference.metrics import InferenceMetrics
from shared.errors import AppError
from shared.http import send_error

EXEMPT = ("/healthz", "/readyz", "/metrics")
CALLER = "recforge.caller"  # the scope key KeyFirst leaves the checked caller under


class GradientLimit:
    """The ceiling of one route. ``sample`` takes each answered request's latency; every window (at
    least ``window`` answers and ``window_s`` seconds) the ceiling moves by the window's median latency
    against the no-queue latency: above ``tolerance`` times it, the ceiling shrinks in proportion (by
    half at most); under the middle of 1 and ``tolerance``, it grows by one if it was reached; between
    the two it holds, so it does not swing with every window.

    The no-queue latency is the median latency of the last ``solos`` requests that ran alone (no other
    request of the route in flight from their start to their end), the route's service time when
    nothing queues. It is not re-learnt under load, where every latency includes some queueing and an
    estimate taken then would drift up with the load it should bound; until a request ran alone, the
    least latency of any window stands in."""

    def __init__(
        self,
        *,
        initial: int = 8,
        minimum: int = 2,
        maximum: int = 256,
        tolerance: float = 1.75,
        window: int = 10,
        window_s: float = 0.05,
        solos: int = 50,
    ) -> None:
        self.limit = float(min(max(initial, minimum), maximum))
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.window = window
        self.window_s = window_s
        self._solos: deque[float] = deque(maxlen=solos)
        self._least: float | None = None
        self._samples: list[float] = []
        self._peak = 0
        self._window_started: float | None = None

    @property
    def ceiling(self) -> int:
        return int(self.limit)

    @property
    def no_queue_s(self) -> float | None:
        if self._solos:
            return statistics.median(self._solos)
        return self._least

    def sample(self, latency_s: float, in_flight: int, now: float, *, alone: bool = False) -> None:
        if alone:
            self._solos.append(latency_s)
        if self._window_started is None:
            self._window_started = now
        self._samples.append(latency_s)
        self._peak = max(self._peak, in_flight)
        if (
            len(self._samples) >= max(self.window, self.ceiling)
            and now - self._window_started >= self.window_s
        ):
            self._update()
            self._samples, self._peak, self._window_started = [], 0, now

    def _update(self) -> None:
        least = min(self._samples)
        self._least = least if self._least is None else min(self._least, least)
        no_queue = self.no_queue_s
        if not no_queue or no_queue <= 0:
            return
        ratio = statistics.median(self._samples) / no_queue
        if ratio > self.tolerance:
            shrink = max(0.5, self.tolerance / ratio)
            self.limit = max(float(self.minimum), self.limit * shrink)
        elif ratio < (1 + self.tolerance) / 2 and self._peak >= self.ceiling:  # only a ceiling in use grows
            self.limit = min(float(self.maximum), self.limit + 1.0)


class LoopLag:
    """How late the event loop runs a timer: a loop that is late to its timers is late to read new
    requests as well."""

    EVERY_S = 0.01

    def __init__(self) -> None:
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.EVERY_S)
            late = max(0.0, loop.time() - before - self.EVERY_S)
            self.lag_s = 0.7 * self.lag_s + 0.3 * late


class Flow:
    """How many requests of one route arrived (refused ones too) and how many were answered over the
    last two seconds, in buckets of ``BUCKET_S``. More arriving than are answered, beyond a burst, is
    a flood: a queue that only grows, however slowly (offered 4% over what the service answers, it
    is seen within a second). A closed loop of clients never floods once it is running, since each
    of them sends its next request only when answered; the burst allows for its clients connecting
    at once."""

    BUCKET_S = 0.05
    BUCKETS = 40  # two seconds
    BURST = 16  # requests that may arrive at once without an answer (clients connecting together)

    def __init__(self) -> None:
        self._arrived = [0] * self.BUCKETS
        self._answered = [0] * self.BUCKETS
        self._bucket = 0

    def _at(self, now: float) -> int:
        bucket = int(now / self.BUCKET_S)
        if bucket != self._bucket:
            for b in range(max(self._bucket + 1, bucket - self.BUCKETS + 1), bucket + 1):
                self._arrived[b % self.BUCKETS] = self._answered[b % self.BUCKETS] = 0
            self._bucket = bucket
        return bucket % self.BUCKETS

    def arrive(self, now: float) -> None:
        self._arrived[self._at(now)] += 1

    def answer(self, now: float) -> None:
        self._answered[self._at(now)] += 1

    def flooded(self, now: float) -> bool:
        self._at(now)
        return sum(self._arrived) > sum(self._answered) + self.BURST


class AdaptiveConcurrency:
    """The ASGI middleware: one ``GradientLimit`` per route. A request over its route's ceiling, while
    the route is not flooded (as many arrive as are answered: a closed loop of clients, a burst),
    waits in line for a slot up to its patience: twenty no-queue service times, a quarter of a second
    to one second; clients that wait for their answers are not refused. While the route is flooded,
    it gets 429 with Retry-After at once, and nothing more is done for it, so the answered requests
    keep the latency of the ceiling; the line is answered 429 as well when a flood shows. A slot
    that comes free goes to the head of the line."""

    PATIENCE = 20  # no-queue service times
    FIRST_PATIENCE_S = 0.25  # before any latency was seen
    LEAST_PATIENCE_S = 0.25
    MOST_PATIENCE_S = 1.0

    OTHER = "*"  # every path not among the routes shares one limit, so unknown paths cost no memory

    def __init__(
        self,
        app: ASGIApp,
        *,
        maximum: int,
        routes: frozenset[str] = frozenset(),
        bulk: frozenset[str] = frozenset(),
        minimum: int = 2,
        initial: int = 8,
    ) -> None:
        self.app = app
        self.routes = routes
        self.bulk = bulk
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.initial = min(initial, maximum)
        self.limits: dict[str, GradientLimit] = {}
        self.flows: dict[str, Flow] = {}
        self.in_flight: dict[str, int] = {}
        self.admitted: dict[str, int] = {}  # requests admitted so far, to tell who ran alone
        self.waiting: dict[str, deque[asyncio.Future[bool]]] = {}
        self.lag = LoopLag()

    def _limit(self, path: str) -> GradientLimit:
        limit = self.limits.get(path)
        if limit is None:
            limit = self.limits[path] = GradientLimit(
                initial=self.initial, minimum=self.minimum, maximum=self.maximum
            )
            self.flows[path] = Flow()
            self.in_flight[path] = 0
            self.admitted[path] = 0
            self.waiting[path] = deque()
        return limit

    def _patience(self, limit: GradientLimit) -> float:
        no_queue = limit.no_queue_s
        if no_queue is None:
            return self.FIRST_PATIENCE_S
        return min(max(self.PATIENCE * no_queue, self.LEAST_PATIENCE_S), self.MOST_PATIENCE_S)

    async def _admit(self, path: str, limit: GradientLimit, now: float) -> bool:
        flow = self.flows[path]
        flow.arrive(now)
        if self.in_flight[path] < limit.ceiling:
            self.in_flight[path] += 1
            return True
        line = self.waiting[path]
        if flow.flooded(now):
            # a queue that only grows: no line, so the answered keep the ceiling's latency; those that
            # joined the line before the flood showed are answered 429 now rather than late
            while line:
                waiting = line.popleft()
                if not waiting.done():
                    waiting.set_result(False)
            return False
        if len(line) >= self.maximum:
            return False
        slot: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        line.append(slot)
        try:
            # True: a request that ended handed its slot over (in_flight already counts it)
            return await asyncio.wait_for(asyncio.shield(slot), self._patience(limit))
        except TimeoutError:
            if slot.done():  # handed over or shed at the last moment
                return slot.result()
            slot.cancel()
            with contextlib.suppress(ValueError):
                line.remove(slot)
            return False

    def _release(self, path: str, limit: GradientLimit) -> None:
        line = self.waiting[path]
        while line and self.in_flight[path] <= limit.ceiling:
            slot = line.popleft()
            if not slot.done():
                slot.set_result(True)  # hand the slot over: in_flight stays as it is
                return
        self.in_flight[path] -= 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        self.lag.start()
        if scope["path"] in self.bulk:
            await self._bulk(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.routes else self.OTHER
        limit = self._limit(path)
        metrics = _metrics(scope)
        if not await self._admit(path, limit, time.perf_counter()):
            if metrics is not None:
                metrics.refused.labels(path).inc()
            await _refuse(send, path, self.in_flight[path])
            return
        flow = self.flows[path]
        in_flight = self.in_flight[path]
        self.admitted[path] += 1
        admitted = self.admitted[path]
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # answered: counted before the client can send its next request, so a closed loop of
                # N clients never has more than N arrived and unanswered
                flow.answer(time.perf_counter())
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            now = time.perf_counter()
            if status == 0:  # it raised before answering: an error answers it further out
                flow.answer(now)
            alone = in_flight == 1 and self.in_flight[path] == 1 and self.admitted[path] == admitted
            self._release(path, limit)
            if status == 200:  # errors answer at their own pace and say nothing of the service time
                limit.sample(now - started + self.lag.lag_s, in_flight, now, alone=alone)
                if metrics is not None:
                    metrics.ceiling.labels(path).set(limit.ceiling)
                    metrics.no_queue.labels(path).set(limit.no_queue_s or 0.0)

    async def _bulk(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A bulk route (batches of texts, sent by clients that care for throughput): no adaptive
        ceiling, which would keep batches small; up to ``maximum`` requests in flight, and its model's
        queue-delay budget (the micro-batcher's 429) sheds what would wait longer than that."""
        path = scope["path"]
        if self.in_flight.get(path, 0) >= self.maximum:
            metrics = _metrics(scope)
            if metrics is not None:
                metrics.refused.labels(path).inc()
            await _refuse(send, path, self.in_flight[path])
            return
        self.in_flight[path] = self.in_flight.get(path, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[path] -= 1


def _metrics(scope: Scope) -> InferenceMetrics | None:
    resources = scope.get("state", {}).get("resources")
    return getattr(resources, "metrics", None)


async def _refuse(send: Send, path: str, in_flight: int) -> None:
    body = json.dumps(
        {"error": "overloaded", "message": f"{in_flight} {path} requests in flight; retry shortly"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class KeyFirst:
    """Checks the caller's key of the ``paths`` (the POST endpoints) before their body is read, so a
    caller without a valid key costs a header lookup and, once per key a while, a database read, but
    never a body. The caller is left in the request's scope (``CALLER``) for the route: never in the
    lifespan state, which requests may share."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            resources = scope["state"]["resources"]
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            try:
                scope[CALLER] = await resources.keys.check(authorization or None)
            except AppError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)
