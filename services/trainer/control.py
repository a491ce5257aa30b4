"""The line between a job's training thread and the worker's event loop.

The thread writes its progress into a snapshot and checks whether it must stop; the event loop
copies the snapshot to Postgres and Redis every couple of seconds and sets the stop flag when a
cancellation arrives. Neither waits on the other."""

from __future__ import annotations

import threading
import time
from typing import Any


class JobCancelled(Exception):
    """Raised inside the training thread when the job was asked to stop."""


class JobControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._version = 0
        self.stop = threading.Event()
        self.limit_reached = False  # stopped at the job's compute limit rather than cancelled
        self.started = time.monotonic()

    def report(self, **fields: Any) -> None:
        with self._lock:
            self._progress.update(fields)
            self._version += 1

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return self._version, dict(self._progress)

    def check(self) -> None:
        if self.stop.is_set():
            raise JobCancelled("the job was cancelled")
