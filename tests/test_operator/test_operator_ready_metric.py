"""modelplane_model_deployment_ready: what the ModelNotReady and ModelFetchFailing alerts
read. One series per ModelDeployment whose reason is its Ready condition's, exported
again after a restart that writes nothing, gone once the ModelDeployment is.
Real kopf against the emulator; the operator runs in this process, so its registry is ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelplane_operator.metrics import MODEL_DEPLOYMENT_READY, forget_model_deployment
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    running_operator,
    start_emulator,
    wait_for,
)
from test_operator.samples import minimal

NS = "metered"


def _md(name: str, **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def _series(name: str) -> dict[str, float]:
    """This ModelDeployment's series: reason -> value."""
    (family,) = MODEL_DEPLOYMENT_READY.collect()
    return {
        s.labels["reason"]: s.value
        for s in family.samples
        if s.labels["namespace"] == NS and s.labels["model"] == name
    }


def _exported_as(name: str, expected: dict[str, float]) -> None:
    wait_for(lambda: _series(name) == expected, f"{name} exported as {expected}")


def _fetch_failing_pod(owner: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{owner}-1",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "modelplane-runtime",
                "app.kubernetes.io/instance": owner,
            },
        },
        "spec": {"containers": [{"name": "runtime", "image": "x"}]},
    }


def test_the_gauge_follows_the_ready_condition_and_leaves_with_the_model(
    cluster: Cluster,
) -> None:
    cluster.create("modeldeployments", _md("demo"))
    wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")
    reason = wait_for(
        lambda: condition(cluster.get("modeldeployments", NS, "demo"), "Ready").get("reason"),
        "a Ready condition",
    )
    _exported_as("demo", {reason: 0.0})

    cluster.create("pods", _fetch_failing_pod("demo"))
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "initContainerStatuses": [
                    {
                        "name": "fetch-model",
                        "ready": False,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1, "message": "error: NoSuchKey"}},
                    }
                ]
            }
        },
        sub="status",
    )
    # The old reason's series is gone, not left at 0 beside the new one.
    _exported_as("demo", {"ModelFetchFailed": 0.0})

    cluster.play_deployment_controller(NS, "demo")
    _exported_as("demo", {"Available": 1.0})

    cluster.delete("modeldeployments", NS, "demo")
    _exported_as("demo", {})


def test_an_invalid_model_deployment_is_exported_and_forgotten_when_deleted(
    cluster: Cluster,
) -> None:
    # No children: nothing but its own DELETED event says it is gone.
    cluster.create("modeldeployments", _md("broken", replicas=-3))
    _exported_as("broken", {"InvalidSpec": 0.0})
    cluster.delete("modeldeployments", NS, "broken")
    _exported_as("broken", {})


def test_a_restarted_operator_exports_what_it_does_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_emulator() as emulator:
        cluster = Cluster(emulator)
        with running_operator(tmp_path, monkeypatch, emulator):
            cluster.create("modeldeployments", _md("steady"))
            cluster.play_deployment_controller(NS, "steady")
            _exported_as("steady", {"Available": 1.0})
        forget_model_deployment(NS, "steady")  # a new process starts with an empty registry
        writes = cluster.mutations()
        with running_operator(tmp_path, monkeypatch, emulator):
            _exported_as("steady", {"Available": 1.0})
            assert cluster.mutations() == writes  # resumed, nothing written, still exported
