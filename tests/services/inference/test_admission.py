"""The adaptive ceiling on requests in flight (a gradient limit): it grows while answers come at the
no-queue latency and the ceiling is used, and falls when they come late because requests queue."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from services.inference.admission import Flow, GradientLimit


def _feed(
    limit: GradientLimit, latency_s: float, windows: int, now: float = 0.0, in_flight: int | None = None
) -> float:
    for _ in range(windows):
        for _ in range(max(limit.window, limit.ceiling)):
            now += 0.01
            limit.sample(latency_s, in_flight if in_flight is not None else limit.ceiling, now)
    return now


def test_the_ceiling_grows_while_answers_come_at_the_no_queue_latency() -> None:
    limit = GradientLimit(initial=4, maximum=20)
    _feed(limit, 0.005, windows=30)
    assert limit.ceiling == 20  # never past the maximum


def test_an_unused_ceiling_does_not_grow() -> None:
    limit = GradientLimit(initial=4, maximum=20)
    _feed(limit, 0.005, windows=30, in_flight=1)
    assert limit.ceiling == 4


def test_the_ceiling_falls_when_answers_queue_and_rises_again_after() -> None:
    limit = GradientLimit(initial=16, minimum=2, maximum=64)
    now = _feed(limit, 0.005, windows=3)
    high = limit.ceiling
    now = _feed(limit, 0.030, windows=20, now=now)  # six times the no-queue latency: requests wait
    assert limit.ceiling == 2
    _feed(limit, 0.005, windows=10, now=now)
    assert 2 < limit.ceiling <= high + 10


def test_the_ceiling_holds_between_the_two_thresholds() -> None:
    limit = GradientLimit(initial=6, maximum=64, tolerance=2.0)  # grows under 1.5x, shrinks over 2x
    now = _feed(limit, 0.005, windows=1)
    held = limit.ceiling
    _feed(limit, 0.009, windows=20, now=now)  # 1.8x the no-queue latency
    assert limit.ceiling == held


def test_the_no_queue_latency_is_learnt_from_requests_that_ran_alone_and_kept_under_load() -> None:
    limit = GradientLimit(initial=8, maximum=64)
    now = 0.0
    for latency in (0.010, 0.011, 0.009, 0.010, 0.012):
        now += 0.1
        limit.sample(latency, 1, now, alone=True)
    assert limit.no_queue_s == 0.010
    _feed(limit, 0.050, windows=200, now=now)  # a long flood: every latency queued, nothing ran alone
    assert limit.no_queue_s == 0.010
    assert limit.ceiling == limit.minimum


async def test_unknown_paths_share_one_limit() -> None:
    from services.inference.admission import AdaptiveConcurrency

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None: ...

    middleware = AdaptiveConcurrency(app, maximum=8, routes=frozenset({"/recommend"}))
    for path in ("/recommend", "/a", "/b", "/c"):
        await middleware({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    assert set(middleware.limits) == {"/recommend", AdaptiveConcurrency.OTHER}


def test_a_closed_loop_never_floods_and_an_open_flood_does() -> None:
    closed, flood = Flow(), Flow()
    now = 0.0
    for _ in range(Flow.BURST):  # the clients connect at once, then each sends again when answered
        closed.arrive(now)
    for step in range(2000):  # two seconds at 1,000 answers/s
        now = step / 1000
        closed.answer(now)
        closed.arrive(now)
        flood.answer(now)
        flood.arrive(now)
        if step % 25 == 0:
            flood.arrive(now)  # 4% more arrive than are answered
    assert not closed.flooded(now)
    assert flood.flooded(now)
    assert not flood.flooded(now + 2.0)  # it forgets within two seconds


def test_a_burst_alone_is_not_a_flood() -> None:
    flow = Flow()
    for _ in range(Flow.BURST):
        flow.arrive(0.0)
    assert not flow.flooded(0.0)
    flow.arrive(0.0)
    assert flow.flooded(0.0)
