"""The operator integration fixtures: emulated API server plus real kopf."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_testkit.kube_emulator import ACCESS_LOG
from modelplane_testkit.operator_harness import (
    Cluster,
    running_operator,
    start_emulator,
    wait_until_watching,
)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """An emulated cluster with the operator running against it and watching."""
    since = len(ACCESS_LOG)
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator):
        wait_until_watching("modeldeployments", since)
        yield Cluster(emulator)
