"""Canaries through a real Gateway on a real node: Traefik (Gateway API) splits the route's
requests by the HTTPRoute's weights, promotion and abort lose no request under load, and a
canary that answers 500 is rolled back from what a real Prometheus scraped.

The versions answer alike to the load (relu of x) and apart on their second output (x
times 2, 3 or 4), so every answer says which version gave it. Each test counts what it
sent and what failed, and the numbers go to bench/results/e2e_node.json.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelplane_testkit import helm
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.gateway import Gateway, get_route, traefik_gateway
from modelplane_testkit.node import NODE_IP
from modelplane_testkit.onnx_models import save_graph
from modelplane_testkit.prometheus_server import PrometheusServer, prometheus
from modelplane_testkit.real_cluster import RealCluster
from test_node.conftest import (
    INFER_BODY,
    MODEL_PORT,
    Load,
    Obj,
    Report,
    namespace,
    serve_files,
    wait_for,
)
from test_node.test_serving_on_node import model_deployment, ready_model

NAME = "ranker"
CANARY = f"{NAME}-canary"
X = [1.0, -2.0, 3.0, -4.0]
# Asks for the output that tells the versions apart.
WHICH_BODY = {
    "inputs": INFER_BODY["inputs"],
    "outputs": [{"name": "relu"}, {"name": "scaled"}],
}
SPLIT_REQUESTS = 2000
# A node shared with other work starts pods slowly; each test waits on several rollouts.
TEST_TIMEOUT = 900
SETTLE = 3.0  # seconds of load after a change has converged
ANALYSIS = {"windowSeconds": 20, "intervalSeconds": 5, "maxErrorRatio": 0.05, "minRequests": 20}
SCRAPE_DELAY = 2 * 2.0  # two scrape intervals: the 500s reach Prometheus


# --- models ------------------------------------------------------------------------------


def scaled_model(path: Path, factor: float) -> bytes:
    """x FP32 [batch, 4] -> relu, and scaled = factor * x: version ``factor``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    outputs = [
        helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 4])
        for out in ("relu", "scaled")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("Mul", ["x", "factor"], ["scaled"]),
        ],
        f"version_{factor:g}",
        [x],
        outputs,
        initializer=[numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor")],
    )
    return save_graph(graph, path).read_bytes()


def failing_model(path: Path) -> bytes:
    """Loads and warms up (on zeros), then fails to run on any other input: x is reshaped
    to [size(x) + sum(|x|)] elements, which only an all-zero x has. onnxruntime raises its
    FAIL status, which the runtime answers as 500."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    relu = helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 4])
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("Abs", ["x"], ["magnitude"]),
            helper.make_node("ReduceSum", ["magnitude"], ["total"], keepdims=0),
            helper.make_node("Cast", ["total"], ["whole"], to=TensorProto.INT64),
            helper.make_node("Size", ["x"], ["size"]),
            helper.make_node("Add", ["size", "whole"], ["length"]),
            helper.make_node("Unsqueeze", ["length", "zero"], ["flat_shape"]),
            helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
            helper.make_node("Shape", ["x"], ["x_shape"]),
            helper.make_node("Reshape", ["flat", "x_shape"], ["back"]),
            helper.make_node("Relu", ["back"], ["relu"]),
        ],
        "fails_at_run_time",
        [x],
        [relu],
        initializer=[zero],
    )
    return save_graph(graph, path).read_bytes()


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("versions")
    found = {f"v{n}.onnx": scaled_model(folder / f"v{n}.onnx", float(n)) for n in (2, 3, 4)}
    return found | {"failing.onnx": failing_model(folder / "failing.onnx")}


def model_ref(files: str, versions: dict[str, bytes], name: str) -> Obj:
    digest = hashlib.sha256(versions[name]).hexdigest()
    return {"uri": f"http://{files}:{MODEL_PORT}/{name}", "sha256": digest}


# --- the gateway, Prometheus and the operator that reads it -------------------------------


@pytest.fixture(scope="module")
def gateway(api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with traefik_gateway(api, tmp_path_factory.mktemp("gateway"), NODE_IP) as started:
        yield started


@pytest.fixture(scope="module")
def prom(api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with prometheus(api, tmp_path_factory.mktemp("prometheus"), NODE_IP) as started:
        yield started


@pytest.fixture(scope="module")
def analysing_operator(
    api: ApiServer, admin: RealCluster, operator_pod: Obj, prom: PrometheusServer
) -> Obj:
    """The release upgraded with ``prometheus.url`` (the chart value the README documents),
    once its new operator Pod is ready."""
    old = operator_pod["metadata"]["name"]
    upgraded = subprocess.run(
        [
            str(helm.install_helm()), "upgrade", helm.RELEASE, str(helm.CHART),
            "--namespace", helm.INSTALL_NAMESPACE, "--reuse-values", "--wait=false",
            "--set-json", f"prometheus.url={json.dumps(prom.url)}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr

    def running() -> Obj | None:
        pods = [
            p
            for p in admin.list("pods", helm.INSTALL_NAMESPACE)
            if not p["metadata"].get("deletionTimestamp")
        ]
        for pod in pods:
            env = {
                e["name"]: e.get("value")
                for c in pod["spec"]["containers"]
                for e in c.get("env", [])
            }
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if (
                env.get("MODELPLANE_OPERATOR_PROMETHEUS_URL") == prom.url
                and statuses
                and all(s.get("ready") for s in statuses)
                and old not in {p["metadata"]["name"] for p in pods}
            ):
                return pod
        return None

    return wait_for(running, "the operator Pod with prometheus.url running", timeout=180)


# --- requests through the gateway ---------------------------------------------------------


def host(ns: str) -> str:
    """Each test's route answers for a hostname of its own: routes on one listener that
    match alike would otherwise take each other's requests (Traefik picks one)."""
    return f"{ns}.models.test"


def which(
    gateway: Gateway, ns: str, body: Obj = WHICH_BODY, timeout: float = 10.0
) -> tuple[int, float | None]:
    """One request through the Gateway: the status, and the version that answered (the
    factor of its ``scaled`` output), None for an answer that is not a 200 (status 0: no
    answer at all)."""
    connection = http.client.HTTPConnection(gateway.address, gateway.port, timeout=timeout)
    try:
        connection.request(
            "POST",
            f"/v2/models/{NAME}/infer",
            json.dumps(body),
            {"Content-Type": "application/json", "Host": host(ns)},
        )
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        connection.close()
    if response.status != 200:
        return response.status, None
    try:
        answer = json.loads(data)
    except ValueError:
        return 0, None
    scaled = [o["data"] for o in answer["outputs"] if o["name"] == "scaled"]
    return 200, scaled[0][0] / X[0] if scaled else None


def answers(gateway: Gateway, ns: str, count: int, clients: int = 8) -> Counter[float | None]:
    with ThreadPoolExecutor(clients) as pool:
        return Counter(
            version for _, version in pool.map(lambda _: which(gateway, ns), range(count))
        )


def versions_answering(
    admin: RealCluster, ns: str, gateway: Gateway, expected: set[float], timeout: float = 60
) -> None:
    """Wait until 40 answers in a row come from exactly the ``expected`` versions (Traefik
    has the route's weights); else fail saying what answered and what the route held."""
    seen: list[Counter[float | None]] = []

    def check() -> bool:
        seen[:] = [answers(gateway, ns, 40)]
        return set(seen[0]) == expected

    try:
        wait_for(check, f"versions {sorted(expected)} answering", timeout)
    except AssertionError as failed:
        state = f"answers {seen}, route {route_weights(admin, ns)}, {canary_status(admin, ns)}"
        raise AssertionError(f"{failed}: {state}") from None


def gateway_load(gateway: Gateway, ns: str) -> Load:
    assert gateway.port == 80, "conftest's Load calls port 80"
    return Load(gateway.address, NAME, headers={"Host": host(ns)})


def route_weights(admin: RealCluster, ns: str) -> dict[str, int]:
    route = get_route(admin, ns, NAME) or {}
    rules = route.get("spec", {}).get("rules", [{}])
    return {b["name"]: b.get("weight", 1) for b in rules[0].get("backendRefs", [])}


def canary_status(admin: RealCluster, ns: str) -> Obj:
    md = admin.get("modeldeployments", ns, NAME) or {}
    found: Obj = md.get("status", {}).get("canary") or {}
    return found


def serving_canary(admin: RealCluster, ns: str, weight: int) -> Obj | None:
    status = canary_status(admin, ns)
    ready = status.get("weight") == weight and status.get("readyReplicas", 0) >= 1
    return status if ready and route_weights(admin, ns).get(CANARY) == weight else None


def deploy(  # noqa: PLR0917 - the pieces of one ModelDeployment
    admin: RealCluster,
    gateway: Gateway,
    ns: str,
    files: str,
    versions: dict[str, bytes],
    stable: str,
    canary: Obj,
) -> None:
    ref = model_ref(files, versions, stable)
    md = model_deployment(
        ns,
        NAME,
        ref["uri"],
        ref["sha256"],
        replicas=1,
        access={"mode": "Open"},
        route={
            "gateway": {"name": gateway.name, "namespace": gateway.namespace},
            "hostnames": [host(ns)],
        },
        canary=canary,
    )
    admin.create("modeldeployments", md)
    ready_model(admin, ns, NAME)


def _measure(report: Report, what: str, load: Load, probe: Errors) -> None:
    report.add(f"gateway: {what}: requests sent/failed", f"{load.sent}/{len(load.failures)}")
    assert load.sent > 0, what
    seen = f"statuses {dict(probe.counted)}, non-200s from/to {probe.failed_between}"
    assert load.failures == [], f"{what}: {seen}: {load.failures[:5]}"


class Errors:
    """Clients through the Gateway until stopped; when the first 500 came back."""

    def __init__(self, gateway: Gateway, ns: str, clients: int = 8, body: Obj = WHICH_BODY) -> None:
        self.gateway = gateway
        self.ns = ns
        self.body = body
        self.clients = clients
        self.first_500: float | None = None
        self.failed_between: list[float] = []  # when the first and the last non-200 came
        self.counted: Counter[int] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _client(self) -> None:
        while not self._stop.is_set():
            status, _ = which(self.gateway, self.ns, self.body)
            with self._lock:
                self.counted[status] += 1
                if status != 200:
                    self.failed_between[1:] = [time.monotonic()]
                    self.failed_between[:1] = self.failed_between[:1] or [time.monotonic()]
                if status == 500 and self.first_500 is None:
                    self.first_500 = time.monotonic()

    def __enter__(self) -> Errors:
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_the_gateway_splits_by_the_canary_weight(
    admin: RealCluster,
    operator_pod: Obj,
    gateway: Gateway,
    versions: dict[str, bytes],
    report: Report,
) -> None:
    ns = namespace(admin, "traffic-split")
    files = serve_files(admin, ns, versions)
    canary = {"weight": 10, "replicas": 1, "model": model_ref(files, versions, "v3.onnx")}
    deploy(admin, gateway, ns, files, versions, "v2.onnx", canary)
    wait_for(lambda: serving_canary(admin, ns, 10), "the canary serving at weight 10", 300)
    # Traefik has the weights once both versions answer through it.
    versions_answering(admin, ns, gateway, {2.0, 3.0})

    counted = answers(gateway, ns, SPLIT_REQUESTS)
    share = counted[3.0] / SPLIT_REQUESTS
    report.add("gateway: canary weight 10: share of 2000 requests", round(share, 4))
    report.add("gateway: canary weight 10: answers stable/canary/other", (
        f"{counted[2.0]}/{counted[3.0]}/{SPLIT_REQUESTS - counted[2.0] - counted[3.0]}"
    ))  # fmt: skip
    assert counted[2.0] + counted[3.0] == SPLIT_REQUESTS, counted
    assert abs(share - 0.10) <= 0.03, counted


@pytest.mark.timeout(TEST_TIMEOUT)
def test_promote_and_abort_under_load_lose_no_request(
    admin: RealCluster,
    operator_pod: Obj,
    gateway: Gateway,
    versions: dict[str, bytes],
    report: Report,
) -> None:
    ns = namespace(admin, "traffic-promote")
    files = serve_files(admin, ns, versions)
    canary = {"weight": 10, "replicas": 1, "model": model_ref(files, versions, "v3.onnx")}
    deploy(admin, gateway, ns, files, versions, "v2.onnx", canary)
    wait_for(lambda: serving_canary(admin, ns, 10), "the canary serving at weight 10", 300)
    versions_answering(admin, ns, gateway, {2.0, 3.0})

    with gateway_load(gateway, ns) as load, Errors(gateway, ns, clients=2) as probe:
        started = time.monotonic()
        admin.patch("modeldeployments", ns, NAME, {"spec": {"canary": {"promote": True}}})

        def promoted() -> bool:
            return (
                admin.get("deployments", ns, CANARY) is None
                and admin.get("services", ns, CANARY) is None
                and route_weights(admin, ns).get(NAME) == 100
                and not route_weights(admin, ns).get(CANARY)
            )

        wait_for(promoted, "the canary promoted and removed", timeout=300)
        report.add("gateway: promote: seconds to the canary removed", round(
            time.monotonic() - started, 1
        ))  # fmt: skip
        time.sleep(SETTLE)
    probe.failed_between = [t - started for t in probe.failed_between]
    _measure(report, "promote under load (32 clients)", load, probe)
    counted = answers(gateway, ns, 200)
    assert counted == Counter({3.0: 200}), counted

    # The promoted spec written back, then a fresh canary, aborted under load.
    admin.patch(
        "modeldeployments",
        ns,
        NAME,
        {"spec": {"model": model_ref(files, versions, "v3.onnx"), "canary": None}},
    )
    admin.patch(
        "modeldeployments",
        ns,
        NAME,
        {"spec": {"canary": {"weight": 10, "model": model_ref(files, versions, "v4.onnx")}}},
    )
    wait_for(lambda: serving_canary(admin, ns, 10), "the fresh canary serving", 300)
    versions_answering(admin, ns, gateway, {3.0, 4.0})
    with gateway_load(gateway, ns) as load, Errors(gateway, ns, clients=2) as probe:
        started = time.monotonic()
        admin.patch("modeldeployments", ns, NAME, {"spec": {"canary": {"weight": 0}}})
        versions_answering(admin, ns, gateway, {3.0}, timeout=30)
        stable_after = time.monotonic() - started
        time.sleep(SETTLE)
    report.add("gateway: abort: seconds to only stable answers", round(stable_after, 2))
    probe.failed_between = [t - started for t in probe.failed_between]
    _measure(report, "abort (weight 0) under load (32 clients)", load, probe)
    assert route_weights(admin, ns) == {NAME: 100, CANARY: 0}
    assert admin.get("deployments", ns, CANARY) is not None, "an aborted canary is kept"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_failing_canary_is_rolled_back_from_prometheus(  # noqa: PLR0917 - fixtures
    admin: RealCluster,
    analysing_operator: Obj,
    gateway: Gateway,
    prom: PrometheusServer,
    versions: dict[str, bytes],
    report: Report,
) -> None:
    ns = namespace(admin, "traffic-rollback")
    files = serve_files(admin, ns, versions)
    canary = {
        "weight": 10,
        "replicas": 1,
        "model": model_ref(files, versions, "failing.onnx"),
        "analysis": ANALYSIS,
    }
    deploy(admin, gateway, ns, files, versions, "v2.onnx", canary)
    wait_for(lambda: serving_canary(admin, ns, 10), "the canary serving at weight 10", 300)
    wait_for(lambda: prom.targets_up(ns) >= 2, "Prometheus scraping both versions", 60)

    budget = ANALYSIS["windowSeconds"] + 2 * ANALYSIS["intervalSeconds"] + 2 * SCRAPE_DELAY
    with Errors(gateway, ns, body=INFER_BODY) as load:
        wait_for(lambda: load.first_500, "the canary's first 500", 60)
        assert load.first_500 is not None
        weight_zero = wait_for(
            lambda: time.monotonic() if route_weights(admin, ns).get(CANARY) == 0 else None,
            "the canary's weight 0 on the HTTPRoute",
            timeout=budget + 30,
        )
        rolled_back_after = weight_zero - load.first_500
        versions_answering(admin, ns, gateway, {2.0}, timeout=30)
    report.add("gateway: rollback: seconds from the first 500 to weight 0", round(
        rolled_back_after, 1
    ))  # fmt: skip
    report.add("gateway: rollback: answers by status during the run", dict(sorted(
        (str(k), v) for k, v in load.counted.items()
    )))  # fmt: skip

    status = canary_status(admin, ns)
    assert status.get("rolledBack") is True, status
    assert status.get("reason") == "ErrorRatio", status
    assert status.get("weight") == 0, status
    events = [
        e
        for e in admin.list("events", ns)
        if e.get("reason") == "CanaryRolledBack" and e.get("type") == "Warning"
    ]
    assert events, [e.get("reason") for e in admin.list("events", ns)]
    assert rolled_back_after <= budget, f"{rolled_back_after:.1f}s > {budget}s: {status}"
