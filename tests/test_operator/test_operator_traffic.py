"""Canaries, scale to zero and KEDA through the real operator: kopf watching the emulated
API server, canary analysis asking a Prometheus stand-in over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from modelplane_testkit.kube_emulator import ACCESS_LOG
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    running_operator,
    start_emulator,
    wait_for,
    wait_until_watching,
)
from test_operator.samples import minimal

NS = "models"
V2 = {"uri": "s3://bucket/v2.onnx"}
ROUTE = {"gateway": {"name": "models"}}
ANALYSIS = {"windowSeconds": 10, "intervalSeconds": 5, "maxErrorRatio": 0.05, "minRequests": 20}


class PrometheusStandIn:
    """Answers /api/v1/query as Prometheus does, with the numbers a test sets: the
    canary's requests and 5xx answers in the window, and its p99."""

    def __init__(self) -> None:
        self.requests, self.errors, self.p99 = 0.0, 0.0, 0.01
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)["query"][0]
                outer.queries.append(query)
                value = (
                    outer.p99
                    if query.startswith("histogram_quantile")
                    else outer.errors
                    if 'outcome=~"5.."' in query
                    else outer.requests
                )
                body = {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {}, "value": [0, str(value)]}],
                    },
                }
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[PrometheusStandIn]:
    stand_in = PrometheusStandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture
def traffic_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prometheus: PrometheusStandIn
) -> Iterator[Cluster]:
    monkeypatch.setenv("MODELPLANE_OPERATOR_PROMETHEUS_URL", prometheus.url)
    since = len(ACCESS_LOG)
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator):
        wait_until_watching("modeldeployments", since)
        yield Cluster(emulator)


def _md(**spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": "demo", "namespace": NS}
    obj["spec"]["access"] = {"mode": "Open"}
    return obj


def _weights(cluster: Cluster) -> dict[str, int] | None:
    route = cluster.get("httproutes", NS, "demo")
    if route is None:
        return None
    (rule,) = route["spec"]["rules"]
    return {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}


def _canary_status(cluster: Cluster) -> dict[str, Any]:
    found: dict[str, Any] = (cluster.get("modeldeployments", NS, "demo") or {}).get(
        "status", {}
    ).get("canary") or {}
    return found


def _warnings(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.list("events") if e.get("reason") == reason]


def test_a_canary_takes_its_share_once_ready_and_is_rolled_back_on_5xx(
    traffic_cluster: Cluster, prometheus: PrometheusStandIn
) -> None:
    cluster = traffic_cluster
    cluster.create(
        "modeldeployments",
        _md(route=ROUTE, canary={"weight": 10, "model": V2, "analysis": ANALYSIS}),
    )
    wait_for(lambda: _weights(cluster) == {"demo": 100, "demo-canary": 0} or None, "route at 0")
    wait_for(lambda: _canary_status(cluster).get("reason") == "NotReady" or None, "NotReady")
    assert prometheus.queries == []  # a canary that is not Ready is not judged

    cluster.play_deployment_controller(NS, "demo")
    cluster.play_deployment_controller(NS, "demo-canary")
    wait_for(lambda: _weights(cluster) == {"demo": 90, "demo-canary": 10} or None, "10%")
    wait_for(lambda: _canary_status(cluster).get("weight") == 10 or None, "status weight 10")

    prometheus.requests = 10.0  # below minRequests: no verdict, however bad
    prometheus.errors = 10.0
    wait_for(lambda: _canary_status(cluster).get("reason") == "TooFewRequests" or None, "noise")
    assert _weights(cluster) == {"demo": 90, "demo-canary": 10}

    prometheus.requests, prometheus.errors = 200.0, 60.0
    wait_for(lambda: _weights(cluster) == {"demo": 100, "demo-canary": 0} or None, "rollback")
    status = _canary_status(cluster)
    assert status["rolledBack"] is True
    assert status["reason"] == "ErrorRatio"
    assert "30.0% of the canary's 200 answers" in status["message"]
    assert status["weight"] == 0
    (event,) = _warnings(cluster, "CanaryRolledBack")
    assert "maxErrorRatio" in event["message"]
    # The query names the canary's pods only.
    assert any('pod=~"demo-canary-[a-z0-9]+-[a-z0-9]+"' in q for q in prometheus.queries)

    # A rollback sticks to its revision, however healthy the canary looks later...
    prometheus.errors = 0.0
    asked = len(prometheus.queries)
    cluster.patch("modeldeployments", NS, "demo", {"metadata": {"labels": {"touched": "1"}}})
    wait_for(lambda: cluster.mutations() > 0 or None, "a write")
    assert _canary_status(cluster)["rolledBack"] is True
    assert _weights(cluster) == {"demo": 100, "demo-canary": 0}
    assert len(prometheus.queries) == asked  # and a rolled-back canary is not asked about

    # ...until the canary changes: a new revision starts over.
    v3 = {"uri": "s3://bucket/v3.onnx"}
    cluster.patch("modeldeployments", NS, "demo", {"spec": {"canary": {"model": v3}}})
    wait_for(lambda: _canary_status(cluster).get("rolledBack") is False or None, "a new revision")
    cluster.play_deployment_controller(NS, "demo-canary")
    wait_for(lambda: _weights(cluster) == {"demo": 90, "demo-canary": 10} or None, "10% again")


def test_promote_then_the_canary_goes_once_the_model_serves_its_spec(
    traffic_cluster: Cluster,
) -> None:
    cluster = traffic_cluster
    cluster.create("modeldeployments", _md(route=ROUTE, canary={"weight": 20, "model": V2}))
    cluster.play_deployment_controller(NS, "demo")
    cluster.play_deployment_controller(NS, "demo-canary")
    wait_for(lambda: _weights(cluster) == {"demo": 80, "demo-canary": 20} or None, "20%")

    cluster.patch("modeldeployments", NS, "demo", {"spec": {"canary": {"promote": True}}})

    def rolled() -> bool | None:
        deployment = cluster.get("deployments", NS, "demo") or {}
        pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
        commands = [c.get("command", []) for c in pod.get("initContainers", [])]
        return any("s3://bucket/v2.onnx" in c for c in commands) or None

    wait_for(rolled, "the model rolling to the canary's spec")
    # The model's rollout has not finished: the canary keeps its share meanwhile.
    assert cluster.get("deployments", NS, "demo-canary") is not None
    assert _weights(cluster) == {"demo": 80, "demo-canary": 20}
    assert _canary_status(cluster)["reason"] == "Promoting"

    cluster.play_deployment_controller(NS, "demo")
    wait_for(lambda: _weights(cluster) == {"demo": 100} or None, "all traffic to the model")
    wait_for(lambda: cluster.get("deployments", NS, "demo-canary") is None or None, "canary gone")
    wait_for(lambda: cluster.get("services", NS, "demo-canary") is None or None, "its Service gone")
    md = cluster.get("modeldeployments", NS, "demo") or {}
    assert md["status"]["model"]["uri"] == "s3://bucket/v2.onnx"
    assert condition(md, "Ready")["status"] == "True"

    # Removing the route and the canary from the spec removes the HTTPRoute.
    cluster.patch("modeldeployments", NS, "demo", {"spec": {"canary": None, "route": None}})
    wait_for(lambda: cluster.get("httproutes", NS, "demo") is None or None, "the route removed")


def _scale(cluster: Cluster, replicas: int, available: int) -> None:
    """What KEDA and the Deployment controller would do: set the count, report on it."""
    cluster.patch("deployments", NS, "demo", {"spec": {"replicas": replicas}}, manager="keda")
    deployment = cluster.get("deployments", NS, "demo") or {}
    cluster.patch(
        "deployments",
        NS,
        "demo",
        {
            "status": {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": available,
                "availableReplicas": available,
                "conditions": [
                    {"type": "Available", "status": "True" if available else "False"},
                ],
            }
        },
        sub="status",
        manager="kube-controller-manager",
    )


def _ready(cluster: Cluster) -> dict[str, Any]:
    return condition(cluster.get("modeldeployments", NS, "demo"), "Ready")


def test_a_model_at_zero_is_ready_and_says_where_to_call_it(traffic_cluster: Cluster) -> None:
    cluster = traffic_cluster
    scaling = {"engine": "keda", "minReplicas": 0, "maxReplicas": 3}
    cluster.create("modeldeployments", _md(autoscaling=scaling))
    wait_for(lambda: cluster.get("scaledobjects", NS, "demo"), "the ScaledObject")
    wait_for(lambda: cluster.get("httpscaledobjects", NS, "demo"), "the HTTPScaledObject")
    assert cluster.get("horizontalpodautoscalers", NS, "demo") is None

    _scale(cluster, replicas=0, available=0)
    wait_for(lambda: _ready(cluster).get("reason") == "ScaledToZero" or None, "ScaledToZero")
    md = cluster.get("modeldeployments", NS, "demo") or {}
    assert _ready(cluster)["status"] == "True"
    assert md["status"]["url"].startswith("http://keda-add-on-http-interceptor-proxy.keda.svc")
    assert md["status"]["host"] == "demo.models.svc.cluster.local"

    _scale(cluster, replicas=1, available=0)  # the first request woke it
    wait_for(lambda: _ready(cluster).get("reason") == "Activating" or None, "Activating")
    assert _ready(cluster)["status"] == "False"

    _scale(cluster, replicas=1, available=1)
    wait_for(lambda: _ready(cluster).get("status") == "True" or None, "Ready")
    # The operator never took the count back from KEDA.
    assert (cluster.get("deployments", NS, "demo") or {})["spec"]["replicas"] == 1

    # Back to the HPA: the KEDA objects go, and status.host with them.
    cluster.patch(
        "modeldeployments",
        NS,
        "demo",
        {"spec": {"autoscaling": {"engine": "hpa", "minReplicas": 1}}},
    )
    wait_for(lambda: cluster.get("horizontalpodautoscalers", NS, "demo"), "the HPA")
    wait_for(lambda: cluster.get("scaledobjects", NS, "demo") is None or None, "no ScaledObject")
    wait_for(lambda: cluster.get("httpscaledobjects", NS, "demo") is None or None, "no HSO")
    wait_for(
        lambda: "host" not in (cluster.get("modeldeployments", NS, "demo") or {})["status"] or None,
        "status.host removed",
    )


def test_keda_not_installed_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prometheus: PrometheusStandIn
) -> None:
    monkeypatch.setenv("MODELPLANE_OPERATOR_PROMETHEUS_URL", prometheus.url)
    since = len(ACCESS_LOG)
    with (
        start_emulator(third_party=False) as emulator,
        running_operator(tmp_path, monkeypatch, emulator),
    ):
        wait_until_watching("modeldeployments", since)
        cluster = Cluster(emulator)
        cluster.create("modeldeployments", _md(autoscaling={"engine": "keda", "maxReplicas": 2}))
        ready = wait_for(
            lambda: (
                _ready(cluster) if _ready(cluster).get("reason") == "DependencyMissing" else None
            ),
            "DependencyMissing",
        )
        assert "install KEDA" in ready["message"]
        assert "ScaledObject (keda.sh/v1alpha1)" in ready["message"]
        # Everything Kubernetes serves itself was still applied.
        assert cluster.get("deployments", NS, "demo") is not None
