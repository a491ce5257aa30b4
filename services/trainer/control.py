"""The line between a job's training thread and the worker's event loop.

The thread writes its progress into a snapshot and checks whether it must stop; the event loop
copies the snapshot to Postgres and Redis every couple of seconds and sets the stop flag when a
cancellation arrives (on the Redis channel at once, or seen in the job's row at the next heartbeat).
Neither waits on the other."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")
LOSS_POINTS = 200  # the most (step, loss) points a job's progress keeps


class JobCancelled(Exception):
    """Raised inside the training thread when the job was asked to stop."""


class StopReason(StrEnum):
    cancelled = "cancelled"  # a person cancelled the job
    compute_limit = "compute limit"  # the job used all the compute it may
    superseded = "superseded"  # the job is no longer this run's: reaped, or taken over by another run
    unreachable = "unreachable"  # the database did not answer the heartbeat for too long


class JobControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._version = 0
        self.stop = threading.Event()
        self.reason: StopReason | None = None
        self.started = time.monotonic()

    def stop_for(self, reason: StopReason) -> None:
        """Ask the run to stop; the first reason given is the one that counts."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.stop.set()

    def report(self, **fields: Any) -> None:
        """Merge ``fields`` into the progress. A new ``phase`` is also appended to ``phases`` (with the
        time it began), and each ``loss`` at a ``step`` to ``loss_curve``, thinned to at most
        LOSS_POINTS points so the row stays small however long the run: what the console draws."""
        with self._lock:
            phase = fields.get("phase")
            if phase is not None and phase != self._progress.get("phase"):
                at = datetime.now(UTC).isoformat(timespec="seconds")
                self._progress["phases"] = [*self._progress.get("phases", []), {"phase": phase, "at": at}]
            if "loss" in fields and "step" in fields and fields["loss"] is not None:
                curve = [*self._progress.get("loss_curve", []), [fields["step"], fields["loss"]]]
                if len(curve) > LOSS_POINTS:  # LOSS_POINTS + 1 points: every other keeps both ends
                    curve = curve[::2]
                self._progress["loss_curve"] = curve
            self._progress.update(fields)
            self._version += 1

    def history(self, last_phase: str) -> dict[str, Any]:
        """The phases (``last_phase`` added) and loss curve, for a job's final progress."""
        with self._lock:
            at = datetime.now(UTC).isoformat(timespec="seconds")
            phases = [*self._progress.get("phases", []), {"phase": last_phase, "at": at}]
            return {"phases": phases, "loss_curve": list(self._progress.get("loss_curve", []))}

    def resume_from(self, progress: dict[str, Any]) -> None:
        """Carry a resumed run's phases and loss curve on from where the last run left them."""
        with self._lock:
            for name in ("phases", "loss_curve"):
                if isinstance(progress.get(name), list):
                    self._progress[name] = list(progress[name])

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return self._version, dict(self._progress)

    @property
    def progress(self) -> dict[str, Any]:
        return self.snapshot()[1]

    def check(self) -> None:
        if self.stop.is_set():
            raise JobCancelled("the job was cancelled")


async def in_thread(control: JobControl, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread. When the worker is stopping (the arq task is cancelled), ask the
    thread to stop at its next check and wait for it, so nothing is left writing files."""
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        control.stop.set()
        with contextlib.suppress(BaseException):
            await future
        raise
