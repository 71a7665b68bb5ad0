"""Suite-wide hooks: ordering for the RBAC test, its request log when run apart, and
the real control-plane tests and the real-node tests left out (with one line each saying
why) unless `make e2e` and `make e2e-node`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from modelplane_testkit import gateway, node, prometheus_server
from modelplane_testkit.control_plane import CLUSTER_ENV, HOW_TO_GET_THEM, find_assets
from modelplane_testkit.kube_emulator import ACCESS_LOG

E2E_DIR = "test_e2e"
NODE_DIR = "test_node"
# The node tests that also need a gateway (Traefik) and Prometheus, beside the node's binaries.
TRAFFIC_FILE = "test_traffic_on_node.py"


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


def _node_unavailable() -> str | None:
    why = node.unavailable()
    if os.environ.get(node.NODE_ENV) != "1":
        return "run them with `make e2e-node`" + (f"; {why}" if why else "")
    return why


def _traffic_unavailable() -> str | None:
    return gateway.unavailable() or prometheus_server.unavailable()


def _leave_out(
    config: pytest.Config, items: list[pytest.Item], folder: str, why: str | None, what: str
) -> None:
    chosen = [item for item in items if folder in item.path.parts]
    if chosen and why is not None:
        items[:] = [item for item in items if folder not in item.path.parts]
        config.hook.pytest_deselected(items=chosen)
        config.stash.setdefault(_LEFT_OUT, []).append(f"{folder}: {len(chosen)} {what}: {why}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_operator_tests") is not None)
    e2e = [item for item in items if {E2E_DIR, NODE_DIR} & set(item.path.parts)]
    for item in e2e:
        # kopf's aiohttp keeps TLS connections to a real API server that the garbage
        # collector closes after KopfRunner stops, during whichever test runs then.
        item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
        item.add_marker(
            pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
        )
    _leave_out(config, items, E2E_DIR, _e2e_unavailable(), "real control-plane tests not run")
    _leave_out(config, items, NODE_DIR, _node_unavailable(), "real-node tests not run")
    _leave_out(config, items, TRAFFIC_FILE, _traffic_unavailable(), "gateway tests not run")


_LEFT_OUT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for line in config.stash.get(_LEFT_OUT, []):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MODELPLANE_ACCESS_LOG")
    if target:
        entries = [dataclasses.asdict(a) for a in ACCESS_LOG]
        Path(target).write_text(json.dumps(entries))
