"""Drift repair, restart idempotency, and status that follows the children."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from modelplane_operator.metrics import RECONCILES
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    observed_generation,
    running_operator,
    start_emulator,
    wait_for,
)
from test_operator.samples import minimal

NS = "models"
FETCH_ERROR = "error: cannot fetch 's3://b/m.onnx': NoSuchKey"
LOAD_ERROR = "onnxruntime cannot load /mnt/models/model.onnx: INVALID_PROTOBUF"


def _md(name: str = "demo", **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def _settle(cluster: Cluster, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """Wait until no write has happened for ``quiet`` seconds; return the write count."""
    deadline = time.monotonic() + timeout
    count, since = cluster.mutations(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the operator never settled"
        time.sleep(0.1)
        if cluster.mutations() != count:
            count, since = cluster.mutations(), time.monotonic()
    return count


def test_deleted_children_are_restored(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md(replicas=2))
    for plural in ("deployments", "services", "poddisruptionbudgets"):
        original = wait_for(partial(cluster.get, plural, NS, "demo"), plural)
        cluster.delete(plural, NS, "demo")
        restored = wait_for(
            partial(cluster.get, plural, NS, "demo"), f"{plural} restored", timeout=10
        )
        assert restored["metadata"]["uid"] != original["metadata"]["uid"]


def test_edited_children_are_restored(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    deployment = wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")
    wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo"), "the HPA")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    containers = deployment["spec"]["template"]["spec"]["containers"]
    containers[0]["image"] = "evil/image:latest"
    cluster.patch(
        "deployments",
        NS,
        "demo",
        {"spec": {"template": {"spec": {"containers": containers}}}},
        manager="kubectl",
    )
    cluster.patch(
        "horizontalpodautoscalers", NS, "demo", {"spec": {"maxReplicas": 99}}, manager="kubectl"
    )
    cluster.patch(
        "services", NS, "demo", {"spec": {"selector": {"app": "hijacked"}}}, manager="kubectl"
    )

    wait_for(
        lambda: (
            (cluster.get("deployments", NS, "demo") or {})["spec"]["template"]["spec"][
                "containers"
            ][0]["image"]
            == image
        ),
        "the image restored",
        timeout=10,
    )
    wait_for(
        lambda: (
            (cluster.get("horizontalpodautoscalers", NS, "demo") or {})["spec"]["maxReplicas"] == 4
        ),
        "maxReplicas restored",
        timeout=10,
    )
    wait_for(
        lambda: (
            (cluster.get("services", NS, "demo") or {})["spec"]["selector"].get(
                "app.kubernetes.io/instance"
            )
            == "demo"
        ),
        "the selector restored",
        timeout=10,
    )


def _unchanged_reconciles() -> float:
    value: float = RECONCILES.labels("unchanged")._value.get()
    return value


def test_restart_with_nothing_changed_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs: list[tuple[str, dict[str, Any]]] = [
        ("plain", {}),
        ("gpu", {"resources": {"gpu": {"count": 1}}, "replicas": 2}),
        ("scaled", {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}),
    ]
    with start_emulator() as emulator:
        cluster = Cluster(emulator)
        with running_operator(tmp_path, monkeypatch, emulator):
            for name, spec in specs:
                cluster.create("modeldeployments", _md(name, **spec))
            for name, _ in specs:
                cluster.play_deployment_controller(NS, name)
                wait_for(partial(_is_ready, cluster, name), f"{name} ready")
            before = _settle(cluster)

        reconciled = _unchanged_reconciles()
        with running_operator(tmp_path, monkeypatch, emulator):
            # Every ModelDeployment is looked at again on resume ...
            wait_for(
                lambda: _unchanged_reconciles() >= reconciled + len(specs), "the resume reconciles"
            )
            time.sleep(1.0)
            # ... and not one mutating request reaches the API.
            assert cluster.mutations() == before, emulator.emulator.mutations[before:]


def test_create_writes_one_apply_per_child_and_one_status(cluster: Cluster) -> None:
    start = cluster.mutations()
    cluster.create("modeldeployments", _md(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    wait_for(
        lambda: observed_generation(cluster.get("modeldeployments", NS, "demo")) == 1,
        "status for generation 1",
    )
    _settle(cluster)
    writes = [(m.method, m.path) for m in cluster.emulator.emulator.mutations[start + 1 :]]
    md = f"/apis/modelplane.io/v1alpha1/namespaces/{NS}/modeldeployments/demo"
    assert sorted(writes) == sorted(
        [
            ("PATCH", f"/api/v1/namespaces/{NS}/services/demo"),
            ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/demo"),
            ("PATCH", f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/demo"),
            ("PATCH", f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/demo"),
            ("PATCH", f"/api/v1/namespaces/{NS}/configmaps/demo"),  # restricted: its access
            ("PATCH", f"{md}/status"),
        ]
    )  # and no kopf bookkeeping patch on the ModelDeployment itself
    created = cluster.get("modeldeployments", NS, "demo")
    assert created is not None
    assert not created["metadata"].get("annotations"), created["metadata"]


def test_spec_changes_are_applied_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def image() -> str:
        deployment = cluster.get("deployments", NS, "demo") or {}
        pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
        return str(pod.get("containers", [{}])[0].get("image", ""))

    with start_emulator() as emulator:
        cluster = Cluster(emulator)
        with running_operator(tmp_path, monkeypatch, emulator):
            cluster.create("modeldeployments", _md())
            wait_for(
                lambda: observed_generation(cluster.get("modeldeployments", NS, "demo")) == 1,
                "status for generation 1",
            )
            _settle(cluster)
        # Changed while the operator was down: picked up when it starts.
        cluster.patch("modeldeployments", NS, "demo", {"spec": {"runtime": {"image": "r:2"}}})
        with running_operator(tmp_path, monkeypatch, emulator):
            wait_for(lambda: image() == "r:2", "the change made while the operator was down")
            wait_for(
                lambda: observed_generation(cluster.get("modeldeployments", NS, "demo")) == 2,
                "status for generation 2",
            )
            # Changed after the restart, before anything else happened to the object.
            cluster.patch("modeldeployments", NS, "demo", {"spec": {"runtime": {"image": "r:3"}}})
            wait_for(lambda: image() == "r:3", "the change made after the restart")
            wait_for(
                lambda: observed_generation(cluster.get("modeldeployments", NS, "demo")) == 3,
                "status for generation 3",
            )


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "modelplane-runtime",
                "app.kubernetes.io/instance": "demo",
            },
        },
        "spec": {"containers": [{"name": "runtime", "image": "x"}]},
    }


def _is_ready(cluster: Cluster, name: str) -> bool:
    return condition(cluster.get("modeldeployments", NS, name), "Ready").get("status") == "True"


def _runtime_status(
    *, waiting: dict[str, str] | None = None, last: dict[str, str] | None = None
) -> dict[str, Any]:
    """The runtime container not ready: waiting (CrashLoopBackOff unless said), and how it
    last ended, as the kubelet reports them."""
    status: dict[str, Any] = {
        "name": "runtime",
        "ready": False,
        "restartCount": 1,
        "state": {"waiting": waiting or {"reason": "CrashLoopBackOff"}},
    }
    if last:
        status["lastState"] = {"terminated": {"exitCode": 137, **last}}
    return status


def _wait_reason(cluster: Cluster, reason: str) -> dict[str, Any]:
    def ready_with_reason() -> dict[str, Any] | None:
        ready = condition(cluster.get("modeldeployments", NS, "demo"), "Ready")
        return ready if ready.get("reason") == reason else None

    return wait_for(ready_with_reason, f"Ready reason {reason}")


def test_status_follows_pods_and_the_deployment(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md(resources={"gpu": {"count": 1}}))
    wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")

    cluster.create("pods", _pod("demo-1"))
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            }
        },
        sub="status",
    )
    ready = _wait_reason(cluster, "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    md = cluster.get("modeldeployments", NS, "demo")
    assert condition(md, "Reconciling")["status"] == "True"
    assert condition(md, "Stalled")["status"] == "False"

    # Scheduled; the init container is fetching (a large model takes minutes).
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [
                    {
                        "name": "fetch-model",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-11-29T10:00:00Z"}},
                    }
                ],
            }
        },
        sub="status",
    )
    ready = _wait_reason(cluster, "FetchingModel")
    assert "since 2026-11-29T10:00:00Z" in ready["message"]
    assert condition(cluster.get("modeldeployments", NS, "demo"), "Reconciling")["status"] == "True"

    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [
                    {
                        "name": "fetch-model",
                        "ready": False,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "message": FETCH_ERROR,
                            }
                        },
                    }
                ],
            }
        },
        sub="status",
    )
    ready = _wait_reason(cluster, "ModelFetchFailed")
    assert "NoSuchKey" in ready["message"]

    # The fetch is fixed; the file fetched is not a model: the runtime exits saying why.
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "initContainerStatuses": [
                    {
                        "name": "fetch-model",
                        "ready": True,
                        "restartCount": 3,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    }
                ],
                "containerStatuses": [
                    {
                        "name": "runtime",
                        "ready": False,
                        "restartCount": 1,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "message": f"ModelLoadFailed: {LOAD_ERROR}",
                            }
                        },
                    }
                ],
            }
        },
        sub="status",
    )
    ready = _wait_reason(cluster, "ModelLoadFailed")
    assert ready["message"] == LOAD_ERROR

    # The kernel kills the runtime at its memory limit: said as such, with the field to raise.
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {"status": {"containerStatuses": [_runtime_status(last={"reason": "OOMKilled"})]}},
        sub="status",
    )
    ready = _wait_reason(cluster, "OOMKilled")
    assert "spec.resources.limits.memory" in ready["message"]

    # An image that cannot be pulled: the kubelet's reason and message, and Stalled.
    pull_error = 'failed to pull and unpack image "registry.example/missing:1": not found'
    cluster.patch(
        "pods",
        NS,
        "demo-1",
        {
            "status": {
                "containerStatuses": [
                    _runtime_status(waiting={"reason": "ErrImagePull", "message": pull_error})
                ]
            }
        },
        sub="status",
    )
    ready = _wait_reason(cluster, "ErrImagePull")
    assert pull_error in ready["message"]
    assert condition(cluster.get("modeldeployments", NS, "demo"), "Stalled")["status"] == "True"

    cluster.delete("pods", NS, "demo-1")
    cluster.patch(
        "deployments",
        NS,
        "demo",
        {
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "demo-abc" has timed out progressing.',
                    }
                ],
            }
        },
        sub="status",
    )
    _wait_reason(cluster, "ProgressDeadlineExceeded")
    md = cluster.get("modeldeployments", NS, "demo")
    assert condition(md, "Stalled")["status"] == "True"
    assert condition(md, "Reconciling")["status"] == "False"

    cluster.play_deployment_controller(NS, "demo")
    _wait_reason(cluster, "Available")
