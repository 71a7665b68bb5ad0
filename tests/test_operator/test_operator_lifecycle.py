"""The operator through real HTTP: real kopf against the emulated API server."""

from __future__ import annotations

from typing import Any

from modelplane_testkit.operator_harness import Cluster, condition, wait_for
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
