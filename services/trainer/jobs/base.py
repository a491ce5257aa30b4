"""What a handler is given, and what it returns."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import torch

from services.trainer.control import JobControl
from services.trainer.store import (
    Claimed,
    JobStore,
    NewDatasets,
    NewLabelingItems,
    NewVersion,
    VersionResult,
)
from shared.config import Settings
from shared.datasets.examples import Examples, load
from shared.storage import ObjectStore, object_store


@dataclass
class JobRun:
    settings: Settings
    claimed: Claimed
    control: JobControl
    device: torch.device
    started: float  # time.monotonic() when the run began
    # records the version folder a fine-tune is about to fill (False: the job is no longer this run's)
    note_output: Callable[[uuid.UUID], Awaitable[bool]] | None = None
    # Folders a handler writes; the runner removes them by the job's outcome. Checkpoints (work_dir)
    # outlive a worker that stops, so the next run resumes; a new version's files (out_dir) stay only
    # when the job succeeds.
    work_dir: Path | None = None
    out_dir: Path | None = None
    store: JobStore | None = None  # what feedback and labelling jobs read the logs and rows through

    @property
    def objects(self) -> ObjectStore:
        """Where datasets, checkpoints and artifacts are stored (shared.storage)."""
        return object_store(self.settings)

    async def examples(self) -> Examples:
        """The job's data as training and validation examples (parsed in a thread)."""
        claimed = self.claimed
        assert claimed.kind is not None
        return await anyio.to_thread.run_sync(
            load, self.objects, claimed.kind, claimed.tables, claimed.catalog_tables
        )


Handler = Callable[[JobRun], Awaitable[NewVersion | VersionResult | NewDatasets | NewLabelingItems]]
