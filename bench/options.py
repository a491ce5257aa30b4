"""Command-line options the benchmarks share."""

from __future__ import annotations

import argparse
from typing import Any

from shared.training import parse_assignment


def hyperparameter(pair: str) -> tuple[str, Any]:
    """argparse type of ``--set NAME=VALUE``."""
    try:
        return parse_assignment(pair)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--set {exc}") from None
