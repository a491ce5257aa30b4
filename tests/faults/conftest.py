"""The fault-injection suite: each module starts a whole stack in real processes and injects faults
from outside (SIGKILL, servers stopped and started again, load, malformed requests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import tiny_bert
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("faults"))
    try:
        yield running.up()
    finally:
        running.down()


@pytest.fixture(scope="module")
def tiny(stack: Stack) -> Path:
    """A tiny random BERT under the stack's model root."""
    return tiny_bert(stack.root / "tiny")
