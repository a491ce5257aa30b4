"""Cancellations heard on Redis: the api publishes a running job's id once its cancellation is committed,
and the worker running that job stops it at once instead of at its next heartbeat.

The job's row is read before the stop flag is set, so only a committed cancellation stops a job. When
Redis is unreachable the listener retries with a growing pause; heartbeats still see the cancellation
in the row meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from services.trainer.context import WorkerContext
from services.trainer.control import StopReason
from shared.jobs import CANCEL_CHANNEL

log = logging.getLogger("recforge.trainer")

RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTHY_S = 60.0  # a connection that served this long before failing starts the retry count afresh
SUBSCRIBE_TIMEOUT_S = 5.0


async def start_listening(wc: WorkerContext) -> asyncio.Task[None]:
    """Start the listener and wait (a few seconds at most) until it is subscribed, so the worker takes
    no job whose cancellation it could miss; if Redis does not answer, the listener keeps trying."""
    subscribed = asyncio.Event()
    task = asyncio.create_task(listen_for_cancellations(wc, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), SUBSCRIBE_TIMEOUT_S)
    except TimeoutError:
        log.warning("the cancel listener is not subscribed yet; heartbeats still see cancellations")
    return task


async def stop_if_cancelled(wc: WorkerContext, message: bytes | str) -> bool:
    """Stop the job a cancel message names when this worker runs it and its row says so."""
    try:
        job_id = uuid.UUID(message.decode() if isinstance(message, bytes) else message)
    except ValueError:
        log.warning("ignoring a malformed cancel message", extra={"message": repr(message)[:100]})
        return False
    control = wc.running.get(job_id)
    if control is None or not await wc.store.cancel_requested(job_id):
        return False
    control.stop_for(StopReason.cancelled)
    log.info("cancellation received", extra={"job_id": str(job_id)})
    return True


async def listen_for_cancellations(wc: WorkerContext, subscribed: asyncio.Event | None = None) -> None:
    """Listen until cancelled; ``subscribed`` is set once the channel is subscribed (the first time).

    A connection that fails again soon after it was made counts as one more failure, so a flapping
    Redis is retried ever more slowly; one that served for a while starts the count afresh."""
    failures = 0
    while True:
        pubsub = wc.redis.pubsub()
        connected = None
        try:
            await pubsub.subscribe(CANCEL_CHANNEL)
            connected = time.monotonic()
            if subscribed is not None:
                subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                if message is not None and message["type"] == "message":
                    await _handle(wc, message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:
            if connected is not None and time.monotonic() - connected > HEALTHY_S:
                failures = 0
            pause = RETRY_S[min(failures, len(RETRY_S) - 1)]
            failures += 1
            log.warning("cancel listener lost Redis; retrying in %.1f s", pause, exc_info=failures == 1)
        finally:
            await _close(pubsub)
        await asyncio.sleep(pause)  # the loop above only ends by an exception, which set the pause


async def _handle(wc: WorkerContext, data: bytes | str) -> None:
    """A failure to act on one message (Postgres away) leaves the subscription as it is: the job's
    heartbeat still sees the cancellation in its row."""
    try:
        await stop_if_cancelled(wc, data)
    except Exception:
        log.warning("could not act on a cancel message", exc_info=True)


async def _close(pubsub: Any) -> None:
    try:
        await asyncio.shield(pubsub.aclose())
    except Exception:  # closing a broken connection may fail too
        log.debug("closing the cancel listener's connection failed", exc_info=True)
