"""KEDA, its metrics adapter, the KEDA HTTP add-on and a Prometheus, as host processes in
the node test's namespaces, against the test's API server.

Binaries are found the way envtest finds its own: ``MODELPLANE_THIRDPARTY_BIN``, else
``~/.local/share/modelplane-thirdparty/bin`` (``keda``, ``keda-adapter``,
``keda-http-add-on-operator``, ``-interceptor``, ``-scaler``, built from KEDA v2.20.2 and the
add-on v0.15.0); their CRDs from ``MODELPLANE_THIRDPARTY_CRDS``, else ``../crds`` beside the
binaries (upstream config/crd/bases: KEDA needs all six of its own, ScaledJob and
CloudEventSource included, and the add-on its InterceptorRoute); Prometheus is Debian's.

In a cluster these run as pods found through cluster DNS. Here nothing resolves cluster
names, so the stack binds a hosts file of its own over /etc/hosts in the test's mount
namespace (never the host's): KEDA dials the add-on's scaler as
``keda-add-on-http-external-scaler.keda:9090`` (the operator's setting), and the interceptor
dials a model's Service as ``NAME.NAMESPACE:80``. Services without selectors, with
EndpointSlices naming the node's address, stand in for the components' own Services where
the API server or a component looks them up (the external metrics APIService, the
interceptor's admin endpoint the scaler polls).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from modelplane_testkit.control_plane import ApiServer, Process, free_port
from modelplane_testkit.node import NODE_IP

BIN_ENV = "MODELPLANE_THIRDPARTY_BIN"
CRDS_ENV = "MODELPLANE_THIRDPARTY_CRDS"
THIRDPARTY_HOME = Path.home() / ".local" / "share" / "modelplane-thirdparty"
BINARIES = (
    "keda",
    "keda-adapter",
    "keda-http-add-on-operator",
    "keda-http-add-on-interceptor",
    "keda-http-add-on-scaler",
)
CRD_FOLDERS = ("keda-v2.20.2", "keda-http-add-on-v0.15.0")
PROMETHEUS = "prometheus"
HOW_TO_GET_THEM = (
    "no KEDA: build KEDA v2.20.2 (keda, keda-adapter) and the KEDA HTTP add-on v0.15.0 "
    f"(keda-http-add-on-operator/-interceptor/-scaler) into ${BIN_ENV} or {THIRDPARTY_HOME}/bin, "
    f"their config/crd/bases into {THIRDPARTY_HOME}/crds/{{{','.join(CRD_FOLDERS)}}}, and "
    "`apt-get install prometheus` (README: 'Scale on traffic, from zero')"
)
NAMESPACE = "keda"
SCALER_PORT = 9090  # the chart's kedaHttpAddOn: keda-add-on-http-external-scaler.NS:9090
SCALER_HOST = f"keda-add-on-http-external-scaler.{NAMESPACE}"
ADMIN_SERVICE = "keda-add-on-http-interceptor-admin"
ADAPTER_SERVICE = "keda-metrics-apiserver"
EXTERNAL_METRICS = "v1beta1.external.metrics.k8s.io"
START_TIMEOUT = 90.0


def bin_dir() -> Path:
    return Path(os.environ.get(BIN_ENV) or THIRDPARTY_HOME / "bin")


def crds_dir() -> Path:
    return Path(os.environ.get(CRDS_ENV) or bin_dir().parent / "crds")


def unavailable() -> str | None:
    """Why the stack cannot start here, or None."""
    if not all((bin_dir() / name).exists() for name in BINARIES):
        return HOW_TO_GET_THEM
    if not all(any((crds_dir() / folder).glob("*.yaml")) for folder in CRD_FOLDERS):
        return HOW_TO_GET_THEM
    if shutil.which(PROMETHEUS) is None:
        return HOW_TO_GET_THEM
    return None


@dataclass
class KedaStack:
    api: ApiServer
    workdir: Path
    prometheus_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    adapter_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)
    _hosts_file: Path | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _discovery: threading.Thread | None = None

    @property
    def prometheus_url(self) -> str:
        return f"http://{NODE_IP}:{self.prometheus_port}"

    @property
    def interceptor(self) -> tuple[str, int]:
        """Where the interceptor's proxy listens (its Service's address in a cluster)."""
        return NODE_IP, self.proxy_port

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for folder in CRD_FOLDERS:
            self.api.kubectl("apply", "--server-side", "-f", str(crds_dir() / folder))
        # KEDA's informers give up on kinds that are not served yet.
        listed = self.api.kubectl("get", "crd", "-o", "name").split()
        self.api.wait_established(*(name.rpartition("/")[2] for name in listed))
        self._apply(_namespace())
        certs = self._certificates()
        self._bind_hosts()
        self.add_host(SCALER_HOST, NODE_IP)
        kubeconfig = str(self.api.kubeconfig)
        base = {"KUBECONFIG": kubeconfig, "POD_NAMESPACE": NAMESPACE, "WATCH_NAMESPACE": ""}
        grpc = f"127.0.0.1:{free_port()}"
        self._prometheus()
        self._spawn(
            "keda",
            ["--metrics-bind-address", f"127.0.0.1:{free_port()}",
             "--health-probe-bind-address", f"127.0.0.1:{free_port()}",
             "--metrics-service-bind-address", grpc,
             "--cert-dir", str(certs),
             "--enable-cert-rotation=false",
             "--enable-webhook-patching=false",
             "--enable-apiservice-patching=false",
             "--zap-log-level=info"],
            base | {"KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE},
        )  # fmt: skip
        self._spawn(
            "keda-adapter",
            ["--secure-port", str(self.adapter_port),
             "--bind-address", NODE_IP,
             "--cert-dir", str(certs),
             "--tls-cert-file", str(certs / "tls.crt"),
             "--tls-private-key-file", str(certs / "tls.key"),
             "--metrics-service-address", grpc,
             "--lister-kubeconfig", kubeconfig,
             "--authentication-kubeconfig", kubeconfig,
             "--authorization-kubeconfig", kubeconfig,
             "--authentication-skip-lookup",
             # The test API server has no front-proxy certificate: the aggregator's calls
             # arrive anonymous, so authorization here is left to the API server.
             "--authorization-always-allow-paths=/*"],
            base,
        )  # fmt: skip
        otel = {"OTEL_PROM_EXPORTER_ENABLED": "false"}
        self._spawn(
            "keda-http-add-on-operator",
            ["--metrics-bind-address", f"127.0.0.1:{free_port()}",
             "--health-probe-bind-address", f"127.0.0.1:{free_port()}"],
            base | otel | {
                "KEDA_HTTP_OPERATOR_EXTERNAL_SCALER_SERVICE": "keda-add-on-http-external-scaler",
                "KEDA_HTTP_OPERATOR_EXTERNAL_SCALER_PORT": str(SCALER_PORT),
                "KEDA_HTTP_OPERATOR_NAMESPACE": NAMESPACE,
            },
        )  # fmt: skip
        self._spawn(
            "keda-http-add-on-interceptor",
            [],
            base | otel | {
                "KEDA_HTTP_PROXY_PORT": str(self.proxy_port),
                "KEDA_HTTP_ADMIN_PORT": str(self.admin_port),
                "KEDA_HTTP_SHUTDOWN_DELAY": "0s",
                "KEDA_HTTP_DRAIN_TIMEOUT": "2s",
            },
        )  # fmt: skip
        self._spawn(
            "keda-http-add-on-scaler",
            [],
            base | otel | {
                "KEDA_HTTP_SCALER_PORT": str(SCALER_PORT),
                "KEDA_HTTP_SCALER_TARGET_ADMIN_NAMESPACE": NAMESPACE,
                "KEDA_HTTP_SCALER_TARGET_ADMIN_SERVICE": ADMIN_SERVICE,
                "KEDA_HTTP_SCALER_TARGET_ADMIN_DEPLOYMENT": "keda-add-on-http-interceptor",
                "KEDA_HTTP_SCALER_TARGET_ADMIN_PORT": str(self.admin_port),
            },
        )  # fmt: skip
        self._apply(_host_service(ADMIN_SERVICE, self.admin_port, self.admin_port))
        self._apply(_host_service(ADAPTER_SERVICE, 443, self.adapter_port))
        self._apply(_api_service())
        self._apply(_anonymous_may_read_external_metrics())
        self._wait_ready()

    def add_host(self, name: str, address: str) -> None:
        """Make ``name`` resolve to ``address`` for the stack's processes (and this one)."""
        self.hosts[name] = address
        assert self._hosts_file is not None
        lines = [f"{address} {host}" for host, address in self.hosts.items()]
        # Written in place: /etc/hosts is a bind mount of this very inode.
        with self._hosts_file.open("r+") as hosts:
            original = hosts.read().split("# modelplane-e2e\n")[0]
            hosts.seek(0)
            hosts.write(original + "# modelplane-e2e\n" + "\n".join(lines) + "\n")
            hosts.truncate()

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        self._stopping.set()
        if self._discovery is not None:
            self._discovery.join(timeout=10)
        with contextlib.suppress(Exception):
            self.api.kubectl("delete", "apiservice", EXTERNAL_METRICS, "--ignore-not-found")
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=5)
        self.processes.clear()
        if self._hosts_file is not None:
            subprocess.run(["umount", "/etc/hosts"], check=False, capture_output=True)
            self._hosts_file = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        binary = shutil.which(PROMETHEUS) if name == PROMETHEUS else str(bin_dir() / name)
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [str(binary), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
                env={"PATH": os.environ.get("PATH", ""), **env},
            )
        self.processes.append(Process(name, popen, log))

    def _apply(self, obj: dict[str, object]) -> None:
        self.api.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(obj)
        )

    def _bind_hosts(self) -> None:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
            raise LookupError("the KEDA stack binds /etc/hosts: only in the tests' own namespaces")
        hosts = self.workdir / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text())
        subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
        self._hosts_file = hosts

    def _certificates(self) -> Path:
        """A CA and one certificate (server and client) for KEDA's gRPC metrics service and the
        adapter: the names their Services would have, and the addresses used here."""
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        ca, ca_key = certs / "ca.crt", certs / "ca.key"
        cert, key, request = certs / "tls.crt", certs / "tls.key", certs / "tls.csr"
        names = certs / "names.ext"
        services = [f"{s}.{NAMESPACE}.svc" for s in ("keda-operator", ADAPTER_SERVICE)]
        names.write_text(
            f"subjectAltName=IP:127.0.0.1,IP:{NODE_IP},DNS:localhost,"
            + ",".join(f"DNS:{s}" for s in services)
            + "\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        for command in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=modelplane-e2e-keda-ca", "-keyout", ca_key, "-out", ca],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=keda-operator",
             "-keyout", key, "-out", request],
            ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", names, "-out", cert],
        ):  # fmt: skip
            subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
        return certs

    def _prometheus(self) -> None:
        """Scrapes every pod port named ``http`` every 2 s, labelled namespace and pod, as a
        PodMonitor of the chart's would. Debian builds Prometheus without Kubernetes service
        discovery, so the stack lists the pods itself and writes them for file_sd."""
        targets = self.workdir / "targets.json"
        targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "scrape_configs": [
                {
                    "job_name": "modelplane-pods",
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "2s"}],
                }
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            PROMETHEUS,
            [f"--config.file={path}",
             f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
             f"--web.listen-address={NODE_IP}:{self.prometheus_port}"],
            {},
        )  # fmt: skip
        self._discovery = threading.Thread(target=self._discover, args=(targets,), daemon=True)
        self._discovery.start()

    def _discover(self, targets: Path) -> None:
        """Kubernetes pod discovery, as Prometheus's role ``pod`` with the relabelling above:
        each running pod's ports named ``http``, labelled with its namespace and name."""
        http = self.api.session()
        written = ""
        while not self._stopping.wait(1.0):
            with contextlib.suppress(requests.RequestException, OSError, ValueError):
                pods = http.get(f"{self.api.server}/api/v1/pods", timeout=5).json()["items"]
                found = [
                    {
                        "targets": [f"{pod['status']['podIP']}:{port['containerPort']}"],
                        "labels": {
                            "namespace": pod["metadata"]["namespace"],
                            "pod": pod["metadata"]["name"],
                        },
                    }
                    for pod in pods
                    if pod.get("status", {}).get("phase") == "Running"
                    and pod["status"].get("podIP")
                    and not pod["spec"].get("hostNetwork")
                    for container in pod["spec"]["containers"]
                    for port in container.get("ports", [])
                    if port.get("name") == "http"
                ]
                text = json.dumps(found, sort_keys=True)
                if text != written:
                    partial = targets.with_suffix(".partial")
                    partial.write_text(text)
                    partial.replace(targets)
                    written = text

    def _wait_ready(self) -> None:
        http = requests.Session()
        http.trust_env = False
        checks: dict[str, Callable[[], bool]] = {
            "prometheus": lambda: http.get(f"{self.prometheus_url}/-/ready", timeout=2).ok,
            "the interceptor": lambda: (
                http.get(f"http://127.0.0.1:{self.admin_port}/queue", timeout=2).ok
            ),
            "the external metrics API": lambda: _available(self.api),
        }
        deadline = time.monotonic() + START_TIMEOUT
        for what, check in checks.items():
            while True:
                for process in self.processes:
                    if process.popen.poll() is not None:
                        tail = process.log.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{process.name} exited: {tail}")
                with contextlib.suppress(requests.RequestException, OSError, RuntimeError):
                    if check():
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not ready after {START_TIMEOUT}s")
                time.sleep(0.5)


def _available(api: ApiServer) -> bool:
    out = api.kubectl("get", "apiservice", EXTERNAL_METRICS, "-o", "yaml")
    conditions = yaml.safe_load(out).get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


def _namespace() -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def _host_service(name: str, port: int, target: int) -> dict[str, object]:
    """A Service with no selector and one EndpointSlice: the node's address, where the
    component listens as a host process."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "main", "port": port, "targetPort": target}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "modelplane-e2e",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": "main", "port": target, "protocol": "TCP"}],
                "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            },
        ],
    }


def _anonymous_may_read_external_metrics() -> dict[str, object]:
    """The test API server has no front-proxy client certificate (--proxy-client-cert-file),
    so the aggregator's calls reach the adapter anonymous, and the adapter asks the API server
    whether system:anonymous may read them. In a cluster the caller (the HPA controller) is
    named and bound by KEDA's chart; here anonymous is, and only for external metrics."""
    name = "modelplane-e2e-external-metrics-reader"
    rule = {"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [rule],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "system:anonymous",
                    }
                ],
            },
        ],
    }


def _api_service() -> dict[str, object]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": EXTERNAL_METRICS},
        "spec": {
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": ADAPTER_SERVICE, "namespace": NAMESPACE, "port": 443},
            "insecureSkipTLSVerify": True,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }


@contextlib.contextmanager
def keda_stack(api: ApiServer, workdir: Path) -> Iterator[KedaStack]:
    if (why := unavailable()) is not None:
        raise LookupError(why)
    stack = KedaStack(api, workdir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
