"""Suite-wide hooks: ordering for the RBAC test, and its request log when run apart."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from modelplane_testkit.kube_emulator import ACCESS_LOG


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "after_operator_tests: reads what the operator integration tests did; runs last",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_operator_tests") is not None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MODELPLANE_ACCESS_LOG")
    if target:
        entries = [dataclasses.asdict(a) for a in ACCESS_LOG]
        Path(target).write_text(json.dumps(entries))
