"""The operator integration fixtures: emulated API server plus real kopf."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_testkit.operator_harness import Cluster, running_operator, start_emulator


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """An emulated cluster with the operator running against it."""
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator):
        yield Cluster(emulator)
