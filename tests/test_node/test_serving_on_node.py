"""From `kubectl apply` to an answer on a real node: the images built here, the fetch init
container writing its emptyDir, the real probes, the Service through kube-proxy, Pod Security
"restricted" enforced by the real admission, a read-only root filesystem held by the kernel."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.node import LocalNode
from modelplane_testkit.real_cluster import ApiRefused, RealCluster
from test_node.conftest import (
    MODEL_PORT,
    Report,
    get,
    namespace,
    serve_files,
    wait_for,
)

Obj = dict[str, Any]
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def model_deployment(ns: str, name: str, uri: str, digest: str | None = None, **spec: Any) -> Obj:
    model: Obj = {"uri": uri}
    if digest:
        model["sha256"] = digest
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"model": model, "resources": SMALL, **spec},
    }


def condition(md: Obj | None, kind: str) -> Obj:
    return next(
        (c for c in (md or {}).get("status", {}).get("conditions", []) if c["type"] == kind), {}
    )


def ready_model(admin: RealCluster, ns: str, name: str, timeout: float = 300) -> Obj:
    def ready() -> Obj | None:
        md = admin.get("modeldeployments", ns, name)
        current = (md or {}).get("metadata", {}).get("generation")
        found = condition(md, "Ready")
        if found.get("status") == "True" and found.get("observedGeneration") == current:
            return md
        return None

    return wait_for(ready, f"{ns}/{name} Ready", timeout=timeout)


def runtime_pods(admin: RealCluster, ns: str, name: str) -> list[Obj]:
    return [
        pod
        for pod in admin.list("pods", ns)
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name
        and not pod["metadata"].get("deletionTimestamp")
    ]


def first_answer(address: str, model: str, timeout: float = 300) -> tuple[list[Any], float]:
    """tritonclient through the Service until the model answers; the answer and when."""
    client = triton.InferenceServerClient(f"{address}:80", connection_timeout=5, network_timeout=10)
    x = triton.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[1, -2, 3, -4]], dtype=np.float32))

    def answered() -> list[Any] | None:
        try:
            result = client.infer(model, [x], outputs=[triton.InferRequestedOutput("double")])
        except Exception:  # noqa: BLE001 - not serving yet: connection refused, 503, ...
            return None
        found: list[Any] = result.as_numpy("double").tolist()
        return found

    answer = wait_for(answered, f"an answer from {model} at {address}", timeout=timeout)
    return answer, time.monotonic()


def test_apply_to_first_answer_in_a_restricted_namespace(  # noqa: PLR0917 - fixtures
    api: ApiServer,
    admin: RealCluster,
    node: LocalNode,
    operator_pod: Obj,
    tiny_model: bytes,
    report: Report,
) -> None:
    ns = namespace(admin, "serving")
    files = serve_files(admin, ns, {"model.onnx": tiny_model})
    digest = hashlib.sha256(tiny_model).hexdigest()
    md = model_deployment(
        ns, "tiny", f"http://{files}:{MODEL_PORT}/model.onnx", digest, access={"mode": "Open"}
    )
    applied = time.monotonic()
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(md))
    service = wait_for(lambda: admin.get("services", ns, "tiny"), "the model's Service")
    answer, answered = first_answer(service["spec"]["clusterIP"], "tiny")
    report.add(
        "apply to first answer, seconds (images imported, model over HTTP)",
        round(answered - applied, 1),
    )
    assert answer == [[2.0, -4.0, 6.0, -8.0]]

    status = ready_model(admin, ns, "tiny")["status"]
    assert status["model"]["sha256"] == digest
    (pod,) = runtime_pods(admin, ns, "tiny")
    fetch = pod["status"]["initContainerStatuses"][0]
    assert fetch["state"]["terminated"]["exitCode"] == 0, fetch
    runtime = pod["status"]["containerStatuses"][0]
    assert runtime["ready"], runtime
    assert runtime["restartCount"] == 0, runtime
    # The runtime ran as the image's user, with the kernel holding the root read-only.
    probe = (
        "import os, errno\n"
        "for path in ('/x', '/opt/modelplane/x', '/home/modelplane/x', '/etc/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print(path, 'written')\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n"
        "print('uid', os.getuid(), os.getgid())\n"
    )
    out = api.kubectl(
        "exec", "-n", ns, pod["metadata"]["name"], "-c", "runtime", "--", "python", "-c", probe
    )
    assert "written" not in out, out
    assert "uid 10001 10001" in out, out
    assert out.count("EROFS") == 4, out

    # What Prometheus would scrape: the pod's own address, the runtime's port.
    code, metrics = get(pod["status"]["podIP"], 8080, "/metrics")
    assert code == 200
    assert b'modelplane_inference_requests_total{model="tiny"' in metrics, metrics[:2000]


def test_pod_security_restricted_is_enforced_by_the_real_admission(
    api: ApiServer, admin: RealCluster, operator_pod: Obj
) -> None:
    """The namespace's label is real: a pod that is not restricted is refused there."""
    ns = namespace(admin, "serving")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "ghcr.io/modelplane/runtime:0.1.0"}]},
    }
    with pytest.raises(ApiRefused, match="violates PodSecurity"):
        admin.create("pods", pod)
    # Every pod the operator made was admitted in the same namespace.
    rendered = [p for p in admin.list("pods", ns) if p["metadata"]["name"] != "model-files"]
    assert rendered
    assert {p["status"].get("phase") for p in rendered} == {"Running"}
