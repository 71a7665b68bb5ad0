"""Operator settings: watched namespaces."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelplane_operator.kopf_setup import in_cluster_server
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


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        # The kubelet's variables win: no cluster DNS is needed to reach the API server.
        (
            {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://10.96.0.1:443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
            "https://[fd00::1]:6443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "https://kubernetes.default.svc"),
        ({}, "https://kubernetes.default.svc"),
    ],
)
def test_in_a_pod_the_api_server_is_found_as_client_go_finds_it(
    environ: dict[str, str], server: str
) -> None:
    assert in_cluster_server(environ, "https://kubernetes.default.svc") == server
