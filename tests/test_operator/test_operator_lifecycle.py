"""The operator through real HTTP: real kopf against the emulated API server."""

from __future__ import annotations

from functools import partial
from typing import Any

from modelplane_testkit.operator_harness import Cluster, condition, observed_generation, wait_for
from test_operator.samples import minimal

NS = "models"


def _md(name: str = "demo", **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def test_create_makes_owned_children_and_goes_ready(cluster: Cluster) -> None:
    md = cluster.create("modeldeployments", _md(resources={"gpu": {"count": 1}}, replicas=2))
    uid = md["metadata"]["uid"]

    deployment = wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")
    service = wait_for(lambda: cluster.get("services", NS, "demo"), "the Service")
    pdb = wait_for(lambda: cluster.get("poddisruptionbudgets", NS, "demo"), "the PDB")
    for child in (deployment, service, pdb):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid
        assert ref["controller"] is True
    pod = deployment["spec"]["template"]["spec"]
    runtime = pod["containers"][0]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert runtime["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False

    not_ready = wait_for(
        lambda: condition(cluster.get("modeldeployments", NS, "demo"), "Ready"), "a Ready condition"
    )
    assert not_ready["status"] == "False"

    cluster.play_deployment_controller(NS, "demo")
    wait_for(
        lambda: (
            condition(cluster.get("modeldeployments", NS, "demo"), "Ready").get("status") == "True"
        ),
        "Ready=True",
    )
    status = cluster.get("modeldeployments", NS, "demo")["status"]  # type: ignore[index]
    assert status["observedGeneration"] == 1
    assert status["url"] == "http://demo.models.svc.cluster.local"
    assert status["replicas"] == 2
    assert status["readyReplicas"] == 2
    assert status["selector"] == (
        "app.kubernetes.io/name=modelplane-runtime,app.kubernetes.io/instance=demo"
    )
    assert status["model"] == {"uri": "s3://bucket/model.onnx"}
    assert condition({"status": status}, "Reconciling")["status"] == "False"
    assert condition({"status": status}, "Stalled")["status"] == "False"


def _deployment(cluster: Cluster) -> dict[str, Any]:
    found = cluster.get("deployments", NS, "demo")
    assert found is not None
    return found


def test_spec_update_changes_children_but_never_the_selector(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md())
    before = wait_for(lambda: cluster.get("deployments", NS, "demo"), "the Deployment")
    assert (
        "nvidia.com/gpu"
        not in before["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )

    cluster.patch(
        "modeldeployments",
        NS,
        "demo",
        {
            "spec": {
                "resources": {"gpu": {"count": 2}},
                "runtime": {
                    "image": "registry.example/runtime:2.0",
                    "batching": {"maxBatchSize": 8, "maxLatencyMs": 2},
                },
            }
        },
    )

    def updated() -> dict[str, Any] | None:
        runtime = _deployment(cluster)["spec"]["template"]["spec"]["containers"][0]
        return runtime if runtime["image"] == "registry.example/runtime:2.0" else None

    runtime = wait_for(updated, "the new image")
    env = {e["name"]: e["value"] for e in runtime["env"]}
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert env["MODELPLANE_MAX_BATCH_SIZE"] == "8"
    assert env["MODELPLANE_MAX_LATENCY_MS"] == "2"
    assert env["MODELPLANE_EXECUTION_PROVIDERS"] == "CUDAExecutionProvider,CPUExecutionProvider"
    after = _deployment(cluster)
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    md = cluster.get("modeldeployments", NS, "demo")
    wait_for(
        lambda: observed_generation(cluster.get("modeldeployments", NS, "demo")) == 2,
        "observedGeneration 2",
    )
    assert md is not None


def test_autoscaling_on_off_on_hands_replicas_over(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md(replicas=3))
    wait_for(
        lambda: (cluster.get("deployments", NS, "demo") or {}).get("spec", {}).get("replicas") == 3,
        "3 replicas",
    )

    # On: the HPA appears and the operator stops applying replicas.
    cluster.patch(
        "modeldeployments",
        NS,
        "demo",
        {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}},
    )
    hpa = wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo"), "the HPA")
    assert hpa["spec"]["minReplicas"] == 2
    wait_for(lambda: cluster.get("poddisruptionbudgets", NS, "demo"), "the PDB")
    # The HPA scales the Deployment; a later reconcile must not undo it.
    cluster.patch(
        "deployments", NS, "demo", {"spec": {"replicas": 5}}, manager="horizontal-pod-autoscaler"
    )
    cluster.patch(
        "modeldeployments", NS, "demo", {"spec": {"runtime": {"batching": {"maxBatchSize": 4}}}}
    )
    wait_for(lambda: _env(cluster)["MODELPLANE_MAX_BATCH_SIZE"] == "4", "the batching change")
    assert _deployment(cluster)["spec"]["replicas"] == 5

    # Off: the HPA and PDB go, and spec.replicas is the Deployment's again.
    cluster.patch("modeldeployments", NS, "demo", {"spec": {"autoscaling": None, "replicas": 1}})
    wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo") is None, "no HPA")
    wait_for(lambda: cluster.get("poddisruptionbudgets", NS, "demo") is None, "no PDB")
    wait_for(lambda: _deployment(cluster)["spec"]["replicas"] == 1, "replicas back to 1")

    # On again.
    cluster.patch(
        "modeldeployments",
        NS,
        "demo",
        {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}},
    )
    wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo"), "the HPA again")
    cluster.patch(
        "deployments", NS, "demo", {"spec": {"replicas": 3}}, manager="horizontal-pod-autoscaler"
    )
    cluster.patch(
        "modeldeployments", NS, "demo", {"spec": {"runtime": {"warmup": {"iterations": 9}}}}
    )
    wait_for(lambda: _env(cluster)["MODELPLANE_WARMUP_ITERATIONS"] == "9", "the warmup change")
    assert _deployment(cluster)["spec"]["replicas"] == 3


def _env(cluster: Cluster) -> dict[str, str]:
    runtime = _deployment(cluster)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in runtime["env"]}


def test_replicas_survive_autoscaling_with_an_hpa_that_never_writes(cluster: Cluster) -> None:
    """Issue 11, finding 3: a real HPA does not write while the count is within its bounds,
    so the operator must hand replicas over itself before it stops applying them."""
    cluster.create("modeldeployments", _md(replicas=5))
    wait_for(lambda: _deployment_or_none(cluster, "replicas") == 5, "5 replicas")

    cluster.patch(
        "modeldeployments",
        NS,
        "demo",
        {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 8}}},
    )
    wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo"), "the HPA")
    wait_for(lambda: "replicas" not in _owned_by_operator(cluster), "the operator lets go")
    cluster.patch(
        "modeldeployments", NS, "demo", {"spec": {"runtime": {"warmup": {"iterations": 6}}}}
    )
    wait_for(lambda: _env(cluster)["MODELPLANE_WARMUP_ITERATIONS"] == "6", "the warmup change")
    assert _deployment(cluster)["spec"]["replicas"] == 5

    # Off again: the operator takes replicas back from the hand-over manager.
    cluster.patch("modeldeployments", NS, "demo", {"spec": {"autoscaling": None, "replicas": 3}})
    wait_for(lambda: _deployment_or_none(cluster, "replicas") == 3, "replicas back to 3")
    wait_for(lambda: "replicas" in _owned_by_operator(cluster), "the operator owns replicas")


def _deployment_or_none(cluster: Cluster, field: str) -> Any:
    return (cluster.get("deployments", NS, "demo") or {}).get("spec", {}).get(field)


def _owned_by_operator(cluster: Cluster) -> set[str]:
    """The Deployment's spec fields the operator's applies own (from managedFields)."""
    for entry in _deployment(cluster)["metadata"].get("managedFields", []):
        if entry["manager"] == "modelplane-operator":
            return {k[2:] for k in entry["fieldsV1"].get("f:spec", {})}
    return set()


def _gone(cluster: Cluster, plural: str) -> bool:
    return cluster.get(plural, NS, "demo") is None


def test_deleting_the_model_deployment_removes_its_children(cluster: Cluster) -> None:
    cluster.create(
        "modeldeployments", _md(replicas=2, autoscaling={"minReplicas": 2, "maxReplicas": 3})
    )
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        wait_for(partial(cluster.get, plural, NS, "demo"), plural)
    md = cluster.get("modeldeployments", NS, "demo")
    assert md is not None
    assert not md["metadata"].get("finalizers"), "no finalizer may block deletion"

    cluster.delete("modeldeployments", NS, "demo")

    for plural in (
        "modeldeployments",
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ):
        wait_for(partial(_gone, cluster, plural), f"{plural} gone")
