from __future__ import annotations

from enum import StrEnum


class ServiceScope(StrEnum):
    """What a project's service key may call (inference endpoints and event logging)."""

    inference = "inference"
    events = "events"
