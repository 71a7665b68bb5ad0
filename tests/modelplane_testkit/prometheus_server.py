"""A real Prometheus for the node tests: Debian's ``prometheus`` binary as a host process.

It discovers pods through the test's API server (``kubernetes_sd_configs``, role pod, as
its administrator), keeps those annotated ``prometheus.io/scrape: "true"`` (the runtime's
pods are), scrapes the annotated port and path every 2 s, and gives every series the
``namespace`` and ``pod`` labels the operator's canary analysis asks about, as the
kube-prometheus PodMonitor does. It listens on the node's bridge address, so the operator
(a pod) reaches it; its storage is the test's temporary directory.

The binary is found envtest's way: ``MODELPLANE_PROMETHEUS_ASSETS`` (a directory), else
``/usr/bin`` (Debian's package; only its binary is used, never its service).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
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
START_TIMEOUT = 60.0


def find_prometheus() -> Path | None:
    binary = Path(os.environ.get(ASSETS_ENV) or ASSETS_HOME) / "prometheus"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def unavailable() -> str | None:
    return HOW_TO_GET_THEM if find_prometheus() is None else None


def scrape_config(api: ApiServer, token_file: Path) -> dict[str, Any]:
    """prometheus.yml: annotated pods, with their namespace and pod as labels."""
    tls = {"ca_file": str(api.ca_file)} if api.ca_file else {}
    meta = "__meta_kubernetes_pod_annotation_prometheus_io"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "pods",
                "scrape_timeout": SCRAPE_INTERVAL,
                "kubernetes_sd_configs": [
                    {
                        "role": "pod",
                        "api_server": api.server,
                        "authorization": {"credentials_file": str(token_file)},
                        "tls_config": tls,
                    }
                ],
                "relabel_configs": [
                    {"source_labels": [f"{meta}_scrape"], "action": "keep", "regex": "true"},
                    # One target per pod, not one per declared container port.
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_container_init",
                            "__meta_kubernetes_pod_phase",
                        ],
                        "action": "keep",
                        "regex": "false;Running",
                    },
                    {
                        "source_labels": ["__address__", f"{meta}_port"],
                        "regex": r"([^:]+)(?::\d+)?;(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {
                        "source_labels": [f"{meta}_path"],
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }


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
def prometheus(
    api: ApiServer, workdir: Path, address: str, port: int = 9090
) -> Iterator[PrometheusServer]:
    """Prometheus on ``address:port``; yields once it is ready."""
    binary = find_prometheus()
    if binary is None:
        raise LookupError(HOW_TO_GET_THEM)
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "token"
    token_file.write_text(api.token or "")
    token_file.chmod(0o600)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(api, token_file), sort_keys=False))
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
        if popen.poll() is None:
            popen.terminate()
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)
