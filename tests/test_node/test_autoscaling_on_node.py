"""`autoscaling.engine: keda` on a real node, with the real KEDA v2.20.2, its metrics adapter,
the KEDA HTTP add-on v0.15.0 and Prometheus (modelplane_testkit.keda_stack): out under load
and back, to zero when idle, the first request held by the interceptor while a pod starts,
and a request past activationTimeoutSeconds answered, not left hanging."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelplane_testkit import helm, keda_stack
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.keda_stack import KedaStack
from modelplane_testkit.onnx_models import slow_loop
from modelplane_testkit.real_cluster import RealCluster
from test_node.conftest import (
    INFER_BODY,
    MODEL_PORT,
    RELU_ANSWER,
    Report,
    namespace,
    post_json,
    serve_files,
    wait_for,
)
from test_node.test_serving_on_node import condition, model_deployment, ready_model

pytestmark = pytest.mark.skipif(
    keda_stack.unavailable() is not None, reason=keda_stack.unavailable() or ""
)
Obj = dict[str, Any]
SLOW_WIDTH = 256  # 256 KiB of weights: the file server is a ConfigMap (1 MiB at most)


@pytest.fixture(scope="module")
def stack(
    api: ApiServer, operator_pod: Obj, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KedaStack]:
    """The stack, and the operator told where its Prometheus is (`helm upgrade`)."""
    with keda_stack.keda_stack(api, tmp_path_factory.mktemp("keda")) as started:
        _upgrade_operator(api, {"prometheus.url": started.prometheus_url})
        yield started


def _upgrade_operator(api: ApiServer, values: dict[str, object]) -> None:
    args = [str(helm.install_helm()), "upgrade", helm.RELEASE, str(helm.CHART)]
    args += ["--namespace", helm.INSTALL_NAMESPACE, "--reuse-values", "--wait=false"]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    subprocess.run(
        args,
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
    )
    (name,) = api.kubectl("get", "deployments", "-n", helm.INSTALL_NAMESPACE, "-o", "name").split()
    api.kubectl("rollout", "status", name, "-n", helm.INSTALL_NAMESPACE, "--timeout=180s")


def keda_object(api: ApiServer, kind: str, ns: str, name: str) -> Obj:
    found: Obj = json.loads(api.kubectl("get", kind, name, "-n", ns, "-o", "json"))
    return found


def replicas(admin: RealCluster, ns: str, name: str) -> int:
    deployment = admin.get("deployments", ns, name) or {}
    return int(deployment.get("spec", {}).get("replicas", 0))


@dataclass
class Reasons:
    """The Ready condition's reasons, sampled every half second, in order of appearance."""

    admin: RealCluster
    ns: str
    name: str
    seen: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(0.5):
            ready = condition(self.admin.get("modeldeployments", self.ns, self.name), "Ready")
            now = (ready.get("status", "?"), ready.get("reason", "?"))
            if not self.seen or self.seen[-1][1:] != now:
                self.seen.append((round(time.monotonic() - start, 1), *now))

    def __enter__(self) -> Reasons:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class SlowLoad:
    """``clients`` threads calling the slow model through its Service, a connection each,
    counting what was sent and what was not a correct 200."""

    address: str
    model: str
    clients: int
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32",
                         "data": [0.5] * SLOW_WIDTH}]}
        )  # fmt: skip
        while not self._stop.is_set():
            problem = None
            connection = http.client.HTTPConnection(self.address, 80, timeout=60)
            try:
                connection.request(
                    "POST", f"/v2/models/{self.model}/infer", body,
                    {"Content-Type": "application/json"},
                )  # fmt: skip
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
                if response.status != 200 or len(answer["outputs"][0]["data"]) != SLOW_WIDTH:
                    problem = f"{response.status} {str(answer)[:200]}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
                problem = f"{type(error).__name__}: {error}"
            finally:
                connection.close()
            with self._lock:
                self.sent += 1
                if problem:
                    self.failures.append(problem)

    def __enter__(self) -> SlowLoad:
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


# Back to 1 waits out the HPA's default 300 s scale-down stabilization window.
@pytest.mark.timeout(900)
def test_keda_scales_out_under_load_and_back(
    api: ApiServer,
    admin: RealCluster,
    stack: KedaStack,
    report: Report,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ns = namespace(admin, "keda-out")
    model = slow_loop(
        tmp_path_factory.mktemp("slow") / "model.onnx", width=SLOW_WIDTH, iterations=1200
    ).read_bytes()
    files = serve_files(admin, ns, {"model.onnx": model})
    scaling = {
        "engine": "keda", "minReplicas": 1, "maxReplicas": 3, "target": 2, "idleSeconds": 10,
    }  # fmt: skip
    uri = f"http://{files}:{MODEL_PORT}/model.onnx"
    admin.create(
        "modeldeployments",
        model_deployment(ns, "slow", uri, autoscaling=scaling, access={"mode": "Open"}),
    )
    ready_model(admin, ns, "slow")

    def scaled_object_ready() -> Obj | None:
        found = keda_object(api, "scaledobjects.keda.sh", ns, "slow")
        ready: Obj = next(
            (c for c in found.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {}
        )
        return found if ready.get("status") == "True" else None

    wait_for(scaled_object_ready, "KEDA's ScaledObject Ready", timeout=90)
    service = admin.get("services", ns, "slow")
    assert service is not None
    clients = 24
    with (
        Reasons(admin, ns, "slow") as reasons,
        SlowLoad(service["spec"]["clusterIP"], "slow", clients) as load,
    ):
        start = time.monotonic()
        wait_for(lambda: replicas(admin, ns, "slow") > 1 or None, "KEDA scaling out", 240)
        out_after = time.monotonic() - start
        most = 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and most < 3:
            most = max(most, replicas(admin, ns, "slow"))
            time.sleep(1)
        ready_model(admin, ns, "slow", timeout=180)
        sent, failed = load.sent, list(load.failures)
    stopped = time.monotonic()
    report.add("keda_scale_out_clients", clients)
    report.add("keda_scale_out_first_s", round(out_after, 1))
    report.add("keda_scale_out_max_replicas", most)
    report.add("keda_scale_out_requests", {"sent": sent, "failed": len(failed)})
    report.add("keda_scale_out_ready_reasons", [list(r) for r in reasons.seen])
    # Back to minReplicas: the HPA KEDA made scales down after its default 300 s
    # stabilization window (the operator renders no behavior), not after idleSeconds.
    wait_for(lambda: replicas(admin, ns, "slow") == 1 or None, "KEDA scaling back to 1", 480)
    back_after = time.monotonic() - stopped
    report.add("keda_scale_in_to_1_s", round(back_after, 1))
    assert most > 1
    assert not failed, failed[:5]


def test_scale_to_zero_and_back_through_the_interceptor(
    admin: RealCluster, stack: KedaStack, report: Report, tiny_model: bytes
) -> None:
    ns = namespace(admin, "keda-zero")
    files = serve_files(admin, ns, {"model.onnx": tiny_model})
    scaling = {
        "engine": "keda", "minReplicas": 0, "maxReplicas": 2, "target": 4,
        "idleSeconds": 30, "activationTimeoutSeconds": 120,
    }  # fmt: skip
    created = time.monotonic()
    admin.create(
        "modeldeployments",
        model_deployment(
            ns,
            "tiny",
            f"http://{files}:{MODEL_PORT}/model.onnx",
            autoscaling=scaling,
            access={"mode": "Open"},
        ),
    )

    def at_zero() -> Obj | None:
        md = admin.get("modeldeployments", ns, "tiny")
        ready = condition(md, "Ready")
        zero = replicas(admin, ns, "tiny") == 0 and ready.get("reason") == "ScaledToZero"
        return md if zero and ready.get("status") == "True" else None

    md = wait_for(at_zero, "tiny at zero replicas, Ready ScaledToZero", timeout=240)
    report.add("keda_zero_first_reached_s", round(time.monotonic() - created, 1))
    host, url = md["status"]["host"], md["status"]["url"]
    service = admin.get("services", ns, "tiny")
    assert service is not None
    stack.add_host(f"tiny.{ns}", service["spec"]["clusterIP"])
    address, port = stack.interceptor
    with Reasons(admin, ns, "tiny") as reasons:
        start = time.monotonic()
        status, answer = post_json(
            address, port, "/v2/models/tiny/infer", INFER_BODY, headers={"Host": host}, timeout=150
        )
        first = time.monotonic() - start
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == RELU_ANSWER
        ready_model(admin, ns, "tiny", timeout=60)
        time.sleep(2)
    seen = [reason for _, _, reason in reasons.seen]
    last_request = time.monotonic()
    wait_for(lambda: replicas(admin, ns, "tiny") == 0 or None, "tiny back at zero", 300)
    back = time.monotonic() - last_request
    report.add("keda_zero_status", {"url": url, "host": host})
    report.add("keda_zero_first_answer_s", round(first, 1))
    report.add("keda_zero_ready_reasons", [list(r) for r in reasons.seen])
    report.add("keda_zero_back_to_zero_s", round(back, 1))
    assert "Activating" in seen, reasons.seen


def test_a_request_past_the_activation_timeout_is_answered(
    admin: RealCluster, stack: KedaStack, report: Report
) -> None:
    """A model whose fetch never finishes (the file server's silent port): the held request
    gets the interceptor's own answer after activationTimeoutSeconds."""
    ns = namespace(admin, "keda-stuck")
    files = serve_files(admin, ns, {"model.onnx": b"unused"})
    scaling = {
        "engine": "keda", "minReplicas": 0, "maxReplicas": 1, "target": 4,
        "idleSeconds": 10, "activationTimeoutSeconds": 5,
    }  # fmt: skip
    admin.create(
        "modeldeployments",
        model_deployment(
            ns,
            "stuck",
            f"http://{files}:8001/model.onnx",
            autoscaling=scaling,
            access={"mode": "Open"},
        ),
    )

    def at_zero() -> Obj | None:
        md = admin.get("modeldeployments", ns, "stuck")
        return md if condition(md, "Ready").get("reason") == "ScaledToZero" else None

    md = wait_for(at_zero, "stuck at zero replicas", timeout=240)
    service = admin.get("services", ns, "stuck")
    assert service is not None
    stack.add_host(f"stuck.{ns}", service["spec"]["clusterIP"])
    address, port = stack.interceptor
    start = time.monotonic()
    connection = http.client.HTTPConnection(address, port, timeout=60)
    try:
        connection.request(
            "POST", "/v2/models/stuck/infer", json.dumps(INFER_BODY),
            {"Host": md["status"]["host"], "Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        body = response.read()[:300].decode(errors="replace")
    finally:
        connection.close()
    waited = time.monotonic() - start
    report.add(
        "keda_activation_timeout",
        {"limit_s": 5, "status": response.status, "after_s": round(waited, 1), "body": body},
    )
    admin.delete("modeldeployments", ns, "stuck")
    assert response.status == 504, body
    assert waited < 30
