"""A real Prometheus for the node tests: Debian's ``prometheus`` binary as a host process.

It scrapes the pods annotated ``prometheus.io/scrape: "true"`` (the runtime's pods are) on
their annotated port and path every 2 s, and gives every series the ``namespace`` and
``pod`` labels the operator's canary analysis asks about, as a PodMonitor or the usual
``kubernetes_sd_configs`` relabelling does. Debian builds Prometheus without the Kubernetes
service discovery (2.42.0+ds: "field kubernetes_sd_configs not found"), so a thread here
lists the pods from the test's API server every second and writes them to a
``file_sd_configs`` file, which Prometheus watches. It listens on the node's bridge address,
so the operator (a pod) reaches it; its storage is the test's temporary directory.

The binary is found envtest's way: ``MODELPLANE_PROMETHEUS_ASSETS`` (a directory), else
``/usr/bin`` (Debian's package; only its binary is used, never its service).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from modelplane_testkit.control_plane import ApiServer, Process
from modelplane_testkit.operator_harness import wait_for

ASSETS_ENV = "MODELPLANE_PROMETHEUS_ASSETS"
ASSETS_HOME = Path("/usr/bin")
HOW_TO_GET_THEM = (
    f"no prometheus: put its binary in {ASSETS_ENV} or {ASSETS_HOME} (`apt-get install "
    "prometheus`, then `systemctl disable --now prometheus`: only the binary is used)"
)
SCRAPE_INTERVAL = "2s"
DISCOVERY_INTERVAL = 1.0  # seconds between pod lists
ANNOTATION = "prometheus.io"
START_TIMEOUT = 60.0


def find_prometheus() -> Path | None:
    binary = Path(os.environ.get(ASSETS_ENV) or ASSETS_HOME) / "prometheus"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def unavailable() -> str | None:
    return HOW_TO_GET_THEM if find_prometheus() is None else None


def scrape_config(targets: Path) -> dict[str, Any]:
    """prometheus.yml: the pods :func:`pod_targets` wrote to ``targets``, scraped every 2 s."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "pods",
                "scrape_timeout": SCRAPE_INTERVAL,
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}],
            }
        ],
    }


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for running pods annotated ``prometheus.io/scrape: "true"``: the
    annotated port and path, and ``namespace`` and ``pod`` labels, as the relabelling of a
    ``kubernetes_sd_configs`` pod role (or a PodMonitor) gives them."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        annotations = meta.get("annotations") or {}
        if annotations.get(f"{ANNOTATION}/scrape") != "true" or meta.get("deletionTimestamp"):
            continue
        if status.get("phase") != "Running" or not status.get("podIP"):
            continue
        port = annotations.get(f"{ANNOTATION}/port", "80")
        labels = {"namespace": meta["namespace"], "pod": meta["name"]}
        if path := annotations.get(f"{ANNOTATION}/path"):
            labels["__metrics_path__"] = path
        groups.append({"targets": [f"{status['podIP']}:{port}"], "labels": labels})
    return sorted(groups, key=lambda group: group["targets"])


class PodDiscovery(threading.Thread):
    """Lists pods from the API server every second and rewrites the file_sd file when the
    targets change (atomically: Prometheus watches the file)."""

    def __init__(self, api: ApiServer, targets: Path) -> None:
        super().__init__(name="prometheus-pod-discovery", daemon=True)
        self.http = api.session()
        self.url = f"{api.server}/api/v1/pods"
        self.targets = targets
        self.stopping = threading.Event()
        self.written: list[dict[str, Any]] | None = None

    def sync(self) -> None:
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            answer = self.http.get(self.url, timeout=5)
            if answer.status_code == 200:
                found = pod_targets(answer.json()["items"])
                if found != self.written:
                    partial = self.targets.with_suffix(".partial")
                    partial.write_text(json.dumps(found))
                    partial.replace(self.targets)
                    self.written = found

    def run(self) -> None:
        while not self.stopping.wait(DISCOVERY_INTERVAL):
            self.sync()


def _session() -> requests.Session:
    """No proxy from the environment: Prometheus is on the node's bridge, nowhere else."""
    http = requests.Session()
    http.trust_env = False
    return http


@dataclass
class PrometheusServer:
    url: str
    process: Process

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        answer = _session().get(
            f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=10
        )
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def targets_up(self, namespace: str) -> int:
        """How many of ``namespace``'s pods Prometheus scrapes successfully."""
        return len(self.query(f'up{{namespace="{namespace}"}} == 1'))


@contextlib.contextmanager
def prometheus(api: ApiServer, workdir: Path, address: str) -> Iterator[PrometheusServer]:
    """Prometheus on a free port of ``address``; yields once it is ready."""
    binary = find_prometheus()
    if binary is None:
        raise LookupError(HOW_TO_GET_THEM)
    workdir.mkdir(parents=True, exist_ok=True)
    targets = workdir / "pods.json"
    discovery = PodDiscovery(api, targets)
    discovery.sync()
    if discovery.written is None:
        targets.write_text("[]")
    discovery.start()
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets), sort_keys=False))
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    argv = [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    log = workdir / "prometheus.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=workdir,
        )  # fmt: skip
    server = PrometheusServer(f"http://{address}:{port}", Process("prometheus", popen, log))
    try:

        def ready() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                return _session().get(f"{server.url}/-/ready", timeout=2).status_code == 200
            return False

        wait_for(ready, "prometheus ready", START_TIMEOUT)
        yield server
    finally:
        discovery.stopping.set()
        discovery.join(timeout=10)
        if popen.poll() is None:
            popen.terminate()
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)
