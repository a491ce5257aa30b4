"""What an import found wrong: per-row errors (file, row, column, reason) and whole-file problems."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_REPORTED = 100


@dataclass(frozen=True, order=True)
class RowError:
    file: str
    row: int | None  # 1-based data row (the line after the header is row 1); None for the whole file
    column: str | None
    reason: str
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImportProblem(Exception):
    """The input cannot become a dataset version. ``errors`` holds per-row errors when there are any."""

    def __init__(self, message: str, *, errors: list[RowError] | None = None, total: int | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors or [RowError("", None, None, message)]
        self.total = total if total is not None else len(self.errors)


@dataclass
class ErrorCollector:
    """Counts every error and keeps the first ``limit`` of them, in row order when reported."""

    limit: int = MAX_REPORTED
    total: int = 0
    kept: list[RowError] = field(default_factory=list)

    def add(self, error: RowError) -> None:
        self.total += 1
        self.kept.append(error)

    def extend(self, errors: list[RowError], total: int) -> None:
        self.total += total
        self.kept.extend(errors)

    def first(self) -> list[RowError]:
        return sorted(self.kept, key=lambda e: (e.file, e.row if e.row is not None else -1, e.column or ""))[
            : self.limit
        ]

    def raise_if_any(self) -> None:
        if self.total:
            noun = "error" if self.total == 1 else "errors"
            raise ImportProblem(
                f"the data has {self.total} {noun}; nothing was stored", errors=self.first(), total=self.total
            )
