"""`kopf run -m modelplane_operator.handlers` as a real process, and operator settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from modelplane_testkit.operator_harness import (
    OPERATOR_ARGS,
    Cluster,
    condition,
    running_operator,
    start_emulator,
    wait_for,
    write_kubeconfig,
)
from modelplane_testkit.runtime_server import free_port
from test_operator.samples import minimal


def test_kopf_run_process_with_liveness_metrics_and_json_logs(tmp_path: Path) -> None:
    liveness, metrics = free_port(), free_port()
    with start_emulator() as emulator:
        cluster = Cluster(emulator)
        env = {
            **os.environ,
            "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", emulator.url)),
            "MODELPLANE_OPERATOR_METRICS_PORT": str(metrics),
            "MODELPLANE_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
            "MODELPLANE_OPERATOR_LOG_FORMAT": "json",
        }
        log = (tmp_path / "operator.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                *OPERATOR_ARGS,
                f"--liveness=http://127.0.0.1:{liveness}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            wait_for(
                lambda: _ok(f"http://127.0.0.1:{liveness}/healthz"),
                "the liveness probe",
                timeout=60,
            )
            md = minimal()
            md["metadata"] = {"name": "smoke", "namespace": "models"}
            cluster.create("modeldeployments", md)
            wait_for(lambda: cluster.get("deployments", "models", "smoke"), "the Deployment")
            text = wait_for(lambda: _text(f"http://127.0.0.1:{metrics}/metrics"), "metrics")
            assert "modelplane_operator_reconciles_total" in text
            assert "modelplane_operator_reconcile_seconds_bucket" in text
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            log.close()
    output = (tmp_path / "operator.log").read_text()
    assert code == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records, output
    assert any("smoke" in json.dumps(r) for r in records)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _text(url: str) -> str | None:
    try:
        response = requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    return response.text if response.status_code == 200 else None


def test_only_watched_namespaces_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_OPERATOR_WATCH_NAMESPACES", "models, staging")
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator):
        cluster = Cluster(emulator)
        for namespace in ("models", "elsewhere"):
            md: dict[str, Any] = minimal()
            md["metadata"] = {"name": "demo", "namespace": namespace}
            cluster.create("modeldeployments", md)
        wait_for(lambda: cluster.get("deployments", "models", "demo"), "the watched one")
        time.sleep(1.5)
        assert cluster.get("deployments", "elsewhere", "demo") is None
        assert condition(cluster.get("modeldeployments", "elsewhere", "demo"), "Ready") == {}
