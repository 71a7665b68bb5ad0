"""Suite-wide hooks: ordering for the RBAC test, its request log when run apart, and
the real control-plane tests left out (with one line saying why) unless `make e2e`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from modelplane_testkit.control_plane import CLUSTER_ENV, HOW_TO_GET_THEM, find_assets
from modelplane_testkit.kube_emulator import ACCESS_LOG

E2E_DIR = "test_e2e"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "after_operator_tests: reads what the operator integration tests did; runs last",
    )


def _e2e_unavailable() -> str | None:
    if os.environ.get("MODELPLANE_E2E") != "1":
        return "run them with `make e2e`"
    if not os.environ.get(CLUSTER_ENV) and find_assets() is None:
        return HOW_TO_GET_THEM
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_operator_tests") is not None)
    e2e = [item for item in items if E2E_DIR in item.path.parts]
    for item in e2e:
        # kopf's aiohttp keeps TLS connections to a real API server that the garbage
        # collector closes after KopfRunner stops, during whichever test runs then.
        item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
        item.add_marker(
            pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
        )
    why = _e2e_unavailable() if e2e else None
    if why is not None:
        items[:] = [item for item in items if E2E_DIR not in item.path.parts]
        config.hook.pytest_deselected(items=e2e)
        config.stash[_E2E_LEFT_OUT] = f"{len(e2e)} real control-plane tests not run: {why}"


_E2E_LEFT_OUT = pytest.StashKey[str]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    left_out = config.stash.get(_E2E_LEFT_OUT, None)
    if left_out:
        terminalreporter.write_line(f"{E2E_DIR}: {left_out}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MODELPLANE_ACCESS_LOG")
    if target:
        entries = [dataclasses.asdict(a) for a in ACCESS_LOG]
        Path(target).write_text(json.dumps(entries))
