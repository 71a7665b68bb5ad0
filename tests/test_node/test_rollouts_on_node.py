"""Rollouts under load on a real node lose no request: 32 clients call the model through its
Service while the model changes, a pod is deleted, the node is drained against the
PodDisruptionBudget, and the replicas go from 3 to 1. Each counts what it sent and what failed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import onnx

from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.node import NODE_NAME
from modelplane_testkit.real_cluster import RealCluster
from test_node.conftest import MODEL_PORT, Load, Obj, Report, namespace, serve_files, wait_for
from test_node.test_serving_on_node import model_deployment, ready_model, runtime_pods

NAME = "stable"
SETTLE = 3.0  # seconds of load after each change has converged


def _another_version(tiny_model: bytes) -> bytes:
    """The same graph with other bytes (and so another digest): version 2."""
    model = onnx.load_from_string(tiny_model)
    model.doc_string = "version 2"
    serialized: bytes = model.SerializeToString()
    return serialized


def _converged(admin: RealCluster, ns: str, replicas: int, digest: str) -> bool:
    md = admin.get("modeldeployments", ns, NAME) or {}
    deployment = admin.get("deployments", ns, NAME) or {}
    status = deployment.get("status", {})
    return (
        md.get("status", {}).get("model", {}).get("sha256") == digest
        and status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas") == replicas
        and status.get("availableReplicas") == replicas
        and status.get("replicas") == replicas
        and len(runtime_pods(admin, ns, NAME)) == replicas
    )


def _drain(api: ApiServer) -> str:
    """`kubectl drain` of the runtime pods; what it printed (both streams: it says what it
    evicted on one and what the budget refused on the other, and exits 1 at its timeout)."""
    assert api.assets is not None
    drained = subprocess.run(
        [
            str(api.assets / "kubectl"), "drain", NODE_NAME,
            "--pod-selector", f"app.kubernetes.io/instance={NAME}",
            "--delete-emptydir-data", "--ignore-daemonsets", "--timeout", "45s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
    )  # fmt: skip
    return drained.stdout + drained.stderr


def _measure(report: Report, what: str, load: Load) -> None:
    report.add(f"rollout: {what}: requests sent/failed", f"{load.sent}/{len(load.failures)}")
    assert load.sent > 0, what
    assert load.failures == [], f"{what}: {load.failures[:5]}"


def test_rollouts_under_load_lose_no_request(  # noqa: PLR0917 - fixtures
    api: ApiServer,
    admin: RealCluster,
    operator_pod: Obj,
    tiny_model: bytes,
    tmp_path: Path,
    report: Report,
) -> None:
    ns = namespace(admin, "rollouts")
    v2 = _another_version(tiny_model)
    files = serve_files(admin, ns, {"v1.onnx": tiny_model, "v2.onnx": v2})
    v1_digest, v2_digest = hashlib.sha256(tiny_model).hexdigest(), hashlib.sha256(v2).hexdigest()
    admin.create(
        "modeldeployments",
        model_deployment(
            ns,
            NAME,
            f"http://{files}:{MODEL_PORT}/v1.onnx",
            v1_digest,
            replicas=3,
            access={"mode": "Open"},
        ),
    )
    ready_model(admin, ns, NAME)
    wait_for(lambda: _converged(admin, ns, 3, v1_digest), "3 replicas of v1")
    assert admin.get("poddisruptionbudgets", ns, NAME) is not None
    service = admin.get("services", ns, NAME)
    assert service is not None
    address = service["spec"]["clusterIP"]

    with Load(address, NAME) as load:
        admin.patch(
            "modeldeployments",
            ns,
            NAME,
            {
                "spec": {
                    "model": {"uri": f"http://{files}:{MODEL_PORT}/v2.onnx", "sha256": v2_digest}
                }
            },
        )
        wait_for(lambda: _converged(admin, ns, 3, v2_digest), "3 replicas of v2", timeout=300)
        time.sleep(SETTLE)
    _measure(report, "new model (URI and digest), 3 replicas", load)

    with Load(address, NAME) as load:
        victim = runtime_pods(admin, ns, NAME)[0]["metadata"]["name"]
        admin.delete("pods", ns, victim)
        wait_for(
            lambda: victim not in {p["metadata"]["name"] for p in admin.list("pods", ns)},
            "the deleted pod gone",
        )
        wait_for(lambda: _converged(admin, ns, 3, v2_digest), "3 replicas again", timeout=300)
        time.sleep(SETTLE)
    _measure(report, "a pod deleted", load)

    # One node: the drain evicts what the budget allows, and the budget holds the rest,
    # since their replacements cannot be scheduled on the cordoned node.
    with Load(address, NAME) as load:
        try:
            drained = _drain(api)
        finally:
            time.sleep(SETTLE)
            api.kubectl("uncordon", NODE_NAME)
    evicted = drained.count("evicted")
    report.add("rollout: drain: pods evicted before the budget held the rest", evicted)
    _measure(report, "kubectl drain of the node against the PDB", load)
    assert evicted >= 1, drained
    assert "disruption budget" in drained, drained
    wait_for(lambda: _converged(admin, ns, 3, v2_digest), "3 replicas after the drain", timeout=300)

    with Load(address, NAME) as load:
        admin.patch("modeldeployments", ns, NAME, {"spec": {"replicas": 1}})
        wait_for(lambda: _converged(admin, ns, 1, v2_digest), "1 replica", timeout=300)
        time.sleep(SETTLE)
    _measure(report, "scaled 3 -> 1", load)
