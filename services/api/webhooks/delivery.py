"""Sending webhook deliveries: signed JSON POSTs, retried with backoff, by every api replica at once.

A sender leases a batch of due deliveries in one short transaction (their next attempt moves past the
time sending can take, so another replica skips them), sends them with no transaction open, and writes
the outcomes in another short transaction. A sender that dies mid-batch loses nothing: its lease runs
out and another sender tries again, so a receiver may see a delivery twice (rarely) and should
de-duplicate on `X-RecForge-Delivery`.

Every request carries `X-RecForge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256>`, the HMAC keyed
with the hook's secret over ``f"{t}.".encode() + body``, the exact bytes of the body. ``verify`` is
what a receiver runs on it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import httpx

from services.api.deps import ApiResources
from services.api.webhooks import repository
from services.api.webhooks.repository import Claimed
from shared.db import unit_of_work

log = logging.getLogger("recforge.webhooks")

USER_AGENT = "RecForge-Webhooks/1"
SIGNATURE_HEADER = "X-RecForge-Signature"
LEASE_MARGIN_S = 30.0  # beyond the send timeout: time to claim, gather and record a batch
MAX_BACKOFF_S = 3600.0
MAX_ERROR = 500
BATCH = 50


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether ``header`` (the `X-RecForge-Signature` of a delivery) signs ``body`` with ``secret``.

    What a receiver runs, on the raw request body as received (before any JSON parsing: a re-encoded
    body has other bytes). False unless the header holds a `t=` timestamp within ``tolerance_s`` of
    ``now`` (default: the current time; a captured request cannot be replayed later) and a `v1=` HMAC
    that matches; digests are compared in constant time. Several `v1=` parts may be given (any may match).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected.encode(), c.encode("utf-8", "replace")) for c in candidates)


def backoff_s(base_s: float, attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: base, then twice as long each time, an hour
    at most."""
    return min(base_s * 2.0 ** (attempts - 1), MAX_BACKOFF_S)


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: the receiver's status (None: no answer), and why it is not delivered."""

    response_status: int | None
    error: str | None = None


def _error_text(text: str, secret: str) -> str:
    return text.replace(secret, "[secret]")[:MAX_ERROR]


async def _send(client: httpx.AsyncClient, claimed: Claimed, timeout_s: float) -> Outcome:
    body = json.dumps(claimed.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-RecForge-Event": claimed.event,
        "X-RecForge-Delivery": str(claimed.id),
        SIGNATURE_HEADER: sign(claimed.secret, int(time.time()), body),
    }
    try:
        # httpx's timeout bounds each phase (connect, each read); this bounds the whole attempt, so a
        # receiver that trickles its answer cannot outlast the lease
        async with asyncio.timeout(timeout_s):
            # streamed and never read: only the status matters, and a huge answer stays unread
            async with client.stream("POST", claimed.url, content=body, headers=headers) as response:
                code = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(None, f"no answer within {timeout_s:g} s")
    except Exception as exc:  # refused, reset, TLS, a URL httpx will not send to: an attempt that failed
        reason = str(exc) or "no detail"
        return Outcome(None, _error_text(f"{type(exc).__name__}: {reason}", claimed.secret))
    if 200 <= code < 300:
        return Outcome(code)
    return Outcome(code, f"the receiver answered HTTP {code}")


async def deliver_due(resources: ApiResources, *, limit: int = BATCH) -> int:
    """Send up to ``limit`` due deliveries (at once) and record their outcomes; the attempts made."""
    settings = resources.settings
    timeout_s = settings.webhook_timeout_s
    async with unit_of_work(resources.sessionmaker) as session:
        batch = await repository.claim_due(session, limit=limit, lease_s=timeout_s + LEASE_MARGIN_S)
    if not batch:
        return 0
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        outcomes = await asyncio.gather(*(_send(client, claimed, timeout_s) for claimed in batch))
    async with unit_of_work(resources.sessionmaker) as session:
        for claimed, outcome in zip(batch, outcomes, strict=True):
            attempts = claimed.attempts + 1
            context = {
                "delivery_id": str(claimed.id),
                "webhook_id": str(claimed.webhook_id),
                "event": claimed.event,
                "attempt": attempts,
                "response_status": outcome.response_status,
            }
            if outcome.error is None and outcome.response_status is not None:
                recorded = await repository.record_delivered(session, claimed, outcome.response_status)
                log.info("webhook delivered", extra=context)
            else:
                error = outcome.error or "no answer"
                last = attempts >= settings.webhook_max_attempts
                retry = None if last else backoff_s(settings.webhook_backoff_s, attempts)
                recorded = await repository.record_failure(
                    session,
                    claimed,
                    response_status=outcome.response_status,
                    error=error,
                    retry_in_s=retry,
                )
                log.warning(
                    "webhook delivery failed; %s",
                    "no attempts left" if last else f"next attempt in {retry:g} s",
                    extra={**context, "error": error},
                )
            if not recorded:
                log.info(
                    "a webhook delivery's outcome was not recorded: it changed while it was sent (its "
                    "hook deactivated or deleted, or its lease ran out and another sender took it)",
                    extra=context,
                )
    return len(batch)


async def delivery_loop(resources: ApiResources, every_s: float = 2.0) -> None:
    """Send due deliveries forever: a full batch is followed at once by the next; a failed pass (the
    database away) is logged, and the next one tries again."""
    while True:
        sent = 0
        try:
            sent = await deliver_due(resources)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("a webhook delivery pass failed; the next one tries again", exc_info=True)
        if sent < BATCH:
            await asyncio.sleep(every_s)
