"""Operator settings: watched namespaces."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelplane_testkit.operator_harness import (
    OPERATOR_ARGS,
    Cluster,
    condition,
    running_operator,
    start_emulator,
    wait_for,
)
from test_operator.samples import minimal


def test_only_watched_namespaces_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*OPERATOR_ARGS[:-1], "--namespace=models", "--namespace=staging"]
    assert OPERATOR_ARGS[-1] == "--all-namespaces"
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator, args):
        cluster = Cluster(emulator)
        for namespace in ("models", "elsewhere"):
            md: dict[str, Any] = minimal()
            md["metadata"] = {"name": "demo", "namespace": namespace}
            cluster.create("modeldeployments", md)
        wait_for(lambda: cluster.get("deployments", "models", "demo"), "the watched one")
        time.sleep(1.5)
        assert cluster.get("deployments", "elsewhere", "demo") is None
        assert condition(cluster.get("modeldeployments", "elsewhere", "demo"), "Ready") == {}
