"""A restricted model on a real node: the key from its Secret is served, no key is refused,
and a rotation reaches the running pods through the kubelet's own ConfigMap refresh with no
request refused meanwhile. The key never appears in the pods' logs."""

from __future__ import annotations

import base64
import hashlib
import time

from modelplane_api.access import key_digest
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.real_cluster import RealCluster
from test_node.conftest import (
    INFER_BODY,
    MODEL_PORT,
    Load,
    Obj,
    Report,
    namespace,
    post_json,
    serve_files,
    wait_for,
)
from test_node.test_serving_on_node import model_deployment, ready_model, runtime_pods


def _key(admin: RealCluster, ns: str, secret: str) -> str:
    found = wait_for(lambda: admin.get("secrets", ns, secret), f"Secret {secret}")
    return base64.b64decode(found["data"]["key"]).decode()


def _status(address: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _ = post_json(address, 80, "/v2/models/guarded/infer", INFER_BODY, headers=headers)
    return status


def test_keys_and_a_rotation_through_the_kubelets_configmap_refresh(
    api: ApiServer, admin: RealCluster, operator_pod: Obj, tiny_model: bytes, report: Report
) -> None:
    ns = namespace(admin, "keys")
    files = serve_files(admin, ns, {"model.onnx": tiny_model})
    digest = hashlib.sha256(tiny_model).hexdigest()
    admin.create(
        "modeldeployments",
        model_deployment(ns, "guarded", f"http://{files}:{MODEL_PORT}/model.onnx", digest),
    )
    admin.create(
        "modelconsumers",
        {
            "apiVersion": "modelplane.io/v1alpha1",
            "kind": "ModelConsumer",
            "metadata": {"name": "team-a", "namespace": ns},
            "spec": {"models": ["guarded"], "key": {"overlapSeconds": 600}},
        },
    )
    ready_model(admin, ns, "guarded")
    service = admin.get("services", ns, "guarded")
    assert service is not None
    address = service["spec"]["clusterIP"]
    old = _key(admin, ns, "team-a-key")
    wait_for(lambda: _status(address, old) == 200, "the key served")
    assert _status(address, None) == 401
    assert _status(address, "mp_" + "0" * 43) == 401

    with Load(address, "guarded", clients=4, headers={"Authorization": f"Bearer {old}"}) as load:
        admin.patch("modelconsumers", ns, "team-a", {"spec": {"key": {"rotation": "2"}}})
        rotated = time.monotonic()
        new: str = wait_for(
            lambda: k if (k := _key(admin, ns, "team-a-key")) != old else None,
            "the new key issued",
        )

        def in_config_map() -> bool:
            config_map = admin.get("configmaps", ns, "guarded") or {}
            return key_digest(new) in str(config_map.get("data", {}))

        wait_for(in_config_map, "the new key's digest in the access ConfigMap")
        written = time.monotonic()
        wait_for(lambda: _status(address, new) == 200, "the new key served", timeout=180)
        served = time.monotonic()
        time.sleep(2)  # the old key keeps working for the overlap: more requests with it
    report.add("key rotation: ConfigMap written to key served, seconds", round(served - written, 1))
    report.add("key rotation: rotation to key served, seconds", round(served - rotated, 1))
    report.add(
        "key rotation: requests with the old key sent/failed", f"{load.sent}/{len(load.failures)}"
    )
    assert load.sent > 0
    assert load.failures == [], load.failures[:5]

    for pod in runtime_pods(admin, ns, "guarded"):
        for container in ("fetch-model", "runtime"):
            logs = api.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", container)
            assert old not in logs, f"the old key in the {container} log"
            assert new not in logs, f"the new key in the {container} log"
