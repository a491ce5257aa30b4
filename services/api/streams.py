"""Server-sent event streams of a row that changes (a training job, a pipeline run): the row as it is
now, at once and again on every notice on a Redis channel (and every KEEPALIVE_S), until it ends or the
caller's key stops being valid. Streams are counted against RECFORGE_MAX_EVENT_STREAMS per process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.context import Principal, still_valid
from services.api.deps import ApiResources
from shared.errors import TooManyRequests

KEEPALIVE_S = 15.0
Read = TypeVar("Read", bound=BaseModel)


def _sse(event: str, payload: str) -> bytes:
    return f"event: {event}\ndata: {payload}\n\n".encode()


def event_stream(
    request: Request,
    resources: ApiResources,
    principal: Principal,
    *,
    event: str,
    first: Read,
    channel: str,
    current: Callable[[AsyncSession], Awaitable[Read]],
    ended: Callable[[Read], bool],
    poll: str,
    also: Callable[[AsyncSession], Awaitable[str | None]] | None = None,
) -> StreamingResponse:
    """``first`` at once, then ``current`` (read in a session of its own) on each message on
    ``channel`` or after KEEPALIVE_S of silence, until ``ended``; an ``end`` event says why a stream
    stopped early. ``poll`` names what to poll instead when too many streams are open. ``also``: one more
    reason the caller may no longer follow (a console session that ended), checked with the key's."""
    streams = resources.event_streams
    if streams.available_tokens < 1:
        raise TooManyRequests(
            f"{streams.total_tokens:.0f} event streams are open on this server (RECFORGE_MAX_EVENT_STREAMS): "
            f"poll {poll}, or retry shortly",
            retry_after=KEEPALIVE_S,
        )

    async def now() -> tuple[Read, str | None]:
        """The row as it is now, and why the caller's key may no longer follow it (or None)."""
        async with resources.sessionmaker() as fresh:
            refusal = await still_valid(fresh, principal)
            if refusal is None and also is not None:
                refusal = await also(fresh)
            return await current(fresh), refusal

    async def stream() -> AsyncIterator[bytes]:
        # taken here, where the finally below is sure to give it back (a stream that never starts
        # holds nothing); two requests racing for the last one: the loser's stream ends at once
        try:
            streams.acquire_nowait()
        except anyio.WouldBlock:
            yield _sse("end", json.dumps({"reason": "too many event streams are open; retry shortly"}))
            return
        try:
            read = first
            yield _sse(event, read.model_dump_json())
            if ended(read):
                return
            pubsub = resources.redis.pubsub()
            await pubsub.subscribe(channel)
            try:
                while not await request.is_disconnected():
                    # a message or KEEPALIVE_S of silence: either way, send the row as it is now
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=KEEPALIVE_S)
                    read, refusal = await now()
                    if refusal is not None:  # the key was revoked or expired while the stream was open
                        yield _sse("end", json.dumps({"reason": refusal}))
                        return
                    yield _sse(event, read.model_dump_json())
                    if ended(read):
                        return
                    await asyncio.sleep(0)
            finally:
                await pubsub.unsubscribe()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            streams.release()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
