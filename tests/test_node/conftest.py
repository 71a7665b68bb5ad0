"""The real node: the control plane, containerd, runc, CNI, the kubelet and kube-proxy, with
the operator running as a Pod from its image (installed by `helm install`). `make e2e-node`
runs these tests inside network and mount namespaces of their own; anywhere else they are
left out with one line saying how to run them (tests/conftest.py).

Traffic goes to 127.0.0.1 (the API server in the test's namespace) and to Pod and Service
addresses on the node's bridge in that namespace, nowhere else.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from modelplane_testkit import helm
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.node import LocalNode, cluster_with_node
from modelplane_testkit.onnx_models import relu_and_double
from modelplane_testkit.operator_harness import wait_for as wait_briefly
from modelplane_testkit.real_cluster import RealCluster

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "e2e_node.json"
RUNTIME_IMAGE = "ghcr.io/modelplane/runtime:0.1.0"
OPERATOR_IMAGE = "ghcr.io/modelplane/operator"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
MODEL_PORT = 8000
# relu_and_double: x -> relu(x), 2x; the load asks for relu only.
INFER_BODY = {
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, -2, 3, -4]}],
    "outputs": [{"name": "relu"}],
}
RELU_ANSWER = [1.0, 0.0, 3.0, 0.0]
T = TypeVar("T")
Obj = dict[str, Any]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 120.0) -> T:
    """The testkit's bounded wait, at a node's pace by default (pods start, kubelets sync)."""
    return wait_briefly(check, what, timeout)


@dataclass
class Report:
    """Numbers the node tests measure, printed at the end and kept in bench/results."""

    rows: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        self.rows[name] = value


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    found = Report()
    yield found
    if found.rows:
        # A run of some of the tests updates their rows and keeps the others'.
        kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps(kept | found.rows, indent=2, sort_keys=True) + "\n")
        print("\nreal node:")  # noqa: T201 - the numbers the README quotes
        for name, value in sorted(found.rows.items()):
            print(f"  {name}: {value}")  # noqa: T201


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, LocalNode]]:
    with cluster_with_node(tmp_path_factory.mktemp("node-cluster")) as started:
        yield started


@pytest.fixture(scope="session")
def api(node_cluster: tuple[ApiServer, LocalNode]) -> ApiServer:
    return node_cluster[0]


@pytest.fixture(scope="session")
def node(node_cluster: tuple[ApiServer, LocalNode]) -> LocalNode:
    return node_cluster[1]


@pytest.fixture(scope="session")
def admin(api: ApiServer) -> RealCluster:
    return RealCluster(api)


@pytest.fixture(scope="session")
def operator_pod(api: ApiServer, admin: RealCluster) -> Obj:
    """`helm install` of the chart with the operator image built here, running as a Pod."""
    tag = yaml.safe_load((helm.CHART / "Chart.yaml").read_text())["appVersion"]
    values = {"repository": OPERATOR_IMAGE, "tag": tag, "pullPolicy": "Never"}
    helm.install_release(
        api.kubeconfig,
        helm.RELEASE,
        {"operator.image": values, "runtime.image": RUNTIME_IMAGE, "operator.logFormat": "text"},
    )

    def running() -> Obj | None:
        for pod in admin.list("pods", helm.INSTALL_NAMESPACE):
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if statuses and all(s.get("ready") for s in statuses):
                return pod
        return None

    return wait_for(running, "the operator Pod running", timeout=180)


def namespace(admin: RealCluster, name: str) -> str:
    admin.namespace(name, labels=RESTRICTED)
    return name


def restricted_container(name: str, command: list[str], port: int | None = None) -> Obj:
    container: Obj = {
        "name": name,
        "image": RUNTIME_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if port:
        container["ports"] = [{"containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    return container


def serve_files(admin: RealCluster, ns: str, files: dict[str, bytes]) -> str:
    """A Pod serving ``files`` over HTTP (python -m http.server, from the runtime image) behind
    a Service; a second port accepts connections and never answers. The Service's address."""
    name = "model-files"
    admin.create(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "binaryData": {k: base64.b64encode(v).decode() for k, v in files.items()},
        },
    )
    silent = (
        "import socket, time\n"
        "s = socket.create_server(('0.0.0.0', 8001)); held = []\n"
        "while True: held.append(s.accept())\n"
    )
    labels = {"app": name}
    admin.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    restricted_container(
                        "http",
                        ["python", "-m", "http.server", str(MODEL_PORT), "-d", "/files"],
                        MODEL_PORT,
                    )
                    | {"volumeMounts": [{"name": "files", "mountPath": "/files"}]},
                    restricted_container("silent", ["python", "-c", silent]),
                ],
                "volumes": [{"name": "files", "configMap": {"name": name}}],
            },
        },
    )
    service = admin.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "http", "port": MODEL_PORT},
                    {"name": "silent", "port": 8001},
                ],
            },
        },
    )
    wait_for(lambda: _ready_endpoints(admin, ns, name), "the model file server ready")
    return str(service["spec"]["clusterIP"])


def _ready_endpoints(admin: RealCluster, ns: str, name: str) -> bool:
    pod = admin.get("pods", ns, name)
    statuses = (pod or {}).get("status", {}).get("containerStatuses", [])
    return bool(statuses) and all(s.get("ready") or s["name"] == "silent" for s in statuses)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return relu_and_double(tmp_path_factory.mktemp("model") / "model.onnx").read_bytes()


def post_json(
    address: str,
    port: int,
    path: str,
    body: Obj,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Obj]:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def get(address: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Load:
    """``clients`` threads calling one model through its Service until stopped; every answer
    that is not a correct 200 is a failure, with what it was. Half the clients open a
    connection per request (kube-proxy routes each anew); half keep theirs alive, as
    tritonclient and most HTTP clients do, and reconnect only when told to
    (``connection: close``) or when the connection breaks (which counts as a failure)."""

    address: str
    model: str
    clients: int = 32
    headers: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, keep_alive: bool) -> None:
        body = json.dumps(INFER_BODY)
        headers = {"Content-Type": "application/json", **self.headers}
        path = f"/v2/models/{self.model}/infer"
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            problem = None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.address, 80, timeout=10)
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
                if response.status != 200 or answer["outputs"][0]["data"] != RELU_ANSWER:
                    problem = f"{response.status} {answer}"
                if not keep_alive or response.getheader("connection") == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
                kind = "keep-alive" if keep_alive else "new connection"
                problem = f"{kind}: {type(error).__name__}: {error}"
                if connection is not None:
                    connection.close()
                    connection = None
            with self._lock:
                self.sent += 1
                if problem:
                    self.failures.append(problem)
        if connection is not None:
            connection.close()

    def __enter__(self) -> Load:
        self._threads = [
            threading.Thread(target=self._client, args=(n % 2 == 1,), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
