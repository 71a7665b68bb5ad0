"""Failures handled by class: invalid specs wait for a change, API errors are retried,
and a child the operator does not own is never overwritten."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from modelplane_testkit.kube_emulator import ACCESS_LOG, Fault
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    running_operator,
    serve_crd,
    start_emulator,
    wait_for,
)
from test_operator.samples import minimal

NS = "models"


def _md(name: str = "demo", **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def _ready(cluster: Cluster, name: str = "demo") -> dict[str, Any]:
    return condition(cluster.get("modeldeployments", NS, name), "Ready")


def test_invalid_spec_reports_and_waits_for_a_change(cluster: Cluster) -> None:
    # The CRD would refuse this at admission; the operator must still cope if one gets in.
    cluster.create("modeldeployments", _md(replicas=-3, model={"uri": "ftp://x/m.onnx"}))

    ready = wait_for(
        lambda: _ready(cluster).get("reason") == "InvalidSpec" and _ready(cluster),
        "Ready=False/InvalidSpec",
    )
    assert ready["status"] == "False"
    assert "spec.replicas" in ready["message"]
    assert "spec.model.uri" in ready["message"]
    stalled = condition(cluster.get("modeldeployments", NS, "demo"), "Stalled")
    assert stalled["status"] == "True"

    def warning_events() -> list[dict[str, Any]]:
        return [
            e
            for e in cluster.list("events")
            if e.get("type") == "Warning" and e.get("reason") == "InvalidSpec"
        ]

    warnings = wait_for(warning_events, "a Warning event")
    assert "spec.replicas" in warnings[0]["message"]
    assert cluster.get("deployments", NS, "demo") is None
    assert cluster.get("services", NS, "demo") is None

    # Not retried in a loop: nothing more is written while nothing changes.
    settled = cluster.mutations()
    time.sleep(3)
    assert cluster.mutations() == settled

    # The next spec change is picked up.
    cluster.patch(
        "modeldeployments", NS, "demo", {"spec": {"replicas": 1, "model": {"uri": "s3://b/m.onnx"}}}
    )
    wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment after the fix")
    wait_for(lambda: _ready(cluster).get("reason") != "InvalidSpec", "InvalidSpec cleared")


@pytest.mark.parametrize("status", [409, 500, 503])
def test_failed_child_writes_are_retried(cluster: Cluster, status: int) -> None:
    cluster.emulator.emulator.faults.append(
        Fault("PATCH", re.compile(r"/deployments/demo\b"), status, times=2)
    )
    cluster.create("modeldeployments", _md())
    wait_for(
        lambda: cluster.get("deployments", NS, "demo"), "the Deployment despite errors", timeout=30
    )
    wait_for(lambda: cluster.get("services", NS, "demo"), "the Service")
    assert all(f.times == 0 for f in cluster.emulator.emulator.faults)


def test_failed_status_writes_are_retried(cluster: Cluster) -> None:
    cluster.emulator.emulator.faults.append(
        Fault("PATCH", re.compile(r"/modeldeployments/demo/status"), 503, times=2)
    )
    cluster.create("modeldeployments", _md())
    wait_for(lambda: _ready(cluster), "a status despite errors", timeout=30)


def test_broken_watches_are_resumed(cluster: Cluster) -> None:
    cluster.emulator.emulator.faults.append(
        Fault("GET", re.compile(r"/deployments\?.*watch=true"), 500, times=3)
    )
    cluster.create("modeldeployments", _md())
    wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")
    cluster.play_deployment_controller(NS, "demo")
    wait_for(
        lambda: _ready(cluster).get("status") == "True", "Ready after watch errors", timeout=30
    )


def test_a_child_it_does_not_own_is_never_overwritten(cluster: Cluster) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo", "namespace": NS, "labels": {"team": "payments"}},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443}]},
    }
    cluster.create("services", foreign)
    cluster.create("modeldeployments", _md())

    ready = wait_for(
        lambda: _ready(cluster).get("reason") == "ChildNotOwned" and _ready(cluster),
        "Ready=False/ChildNotOwned",
    )
    assert "Service models/demo exists and is not owned" in ready["message"]
    service = cluster.get("services", NS, "demo")
    assert service is not None
    assert service["spec"]["selector"] == {"app": "payments"}
    assert "ownerReferences" not in service["metadata"]
    assert cluster.get("deployments", NS, "demo") is None  # nothing half-created

    cluster.delete("services", NS, "demo")
    owned = wait_for(
        lambda: (
            (cluster.get("services", NS, "demo") or {}).get("metadata", {}).get("ownerReferences")
        ),
        "the operator's own Service",
        timeout=60,
    )
    assert owned[0]["name"] == "demo"
    wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")


def test_operator_started_before_its_crd_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _discovery_requests()
    with (
        start_emulator(with_crd=False) as emulator,
        running_operator(tmp_path, monkeypatch, emulator),
    ):
        wait_for(lambda: _discovery_requests() >= before + 2, "a second look for the CRD", 30)
        serve_crd(emulator)
        cluster = Cluster(emulator)
        cluster.create("modeldeployments", _md())
        wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment", timeout=30)


def _discovery_requests() -> int:
    return sum(a.path == "/apis/modelplane.io/v1alpha1" for a in ACCESS_LOG)
