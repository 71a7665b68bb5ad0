"""`serve -f ModelDeployment.yaml`: the pod's settings, on a laptop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from modelplane_testkit.runtime_server import RuntimeServer, run_runtime_cli


def _manifest(tmp_path: Path, uri: str, **runtime: object) -> Path:
    path = tmp_path / "md.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "modelplane.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "scorer", "namespace": "models"},
                "spec": {
                    "model": {"uri": uri},
                    "runtime": {"batching": {"maxBatchSize": 4}, **runtime},
                },
            }
        )
    )
    return path


def test_serve_a_model_deployment_file(models: dict[str, Path], tmp_path: Path, logs: Path) -> None:
    manifest = _manifest(tmp_path, models["relu"].as_uri())
    with RuntimeServer(["-f", str(manifest)], log_dir=logs) as server:
        assert server.get("/v2/models/scorer/ready").status_code == 200
        body = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-1, 0, 1, 2]}]
        }
        result = server.post("/v2/models/scorer/infer", json=body).json()
        assert result["outputs"][0]["data"] == [0.0, 0.0, 1.0, 2.0]


def test_serving_rejects_what_cannot_run_locally(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return run_runtime_cli("serve", *args)

    pvc = serve("-f", str(_manifest(tmp_path, "pvc://claim/model.onnx")))
    assert pvc.returncode == 2
    assert "PVC" in pvc.stderr
    assert pvc.stderr.count("\n") == 1
    invalid = serve("-f", str(_manifest(tmp_path, "ftp://x/model.onnx")))
    assert invalid.returncode == 1  # a bad file, not a bad argument
    assert "spec.model.uri" in invalid.stderr
    missing = serve("--model", str(tmp_path / "absent.onnx"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    both = serve("--model", "a.onnx", "-f", "b.yaml")
    assert both.returncode == 2
    assert both.stderr.count("\n") == 1


def test_bad_arguments_and_models_fail_fast_in_one_line(tmp_path: Path) -> None:
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("this is not a protobuf")
    for args, status, words in (
        (("--port", "70000"), 2, "not a port number (1-65535)"),
        (("--port", "8o80"), 2, "not a port number"),
        (("--model", str(not_onnx), "--port", "0"), 2, "not a port number"),
        (("--model", str(not_onnx)), 1, "onnxruntime cannot load"),
    ):
        result = run_runtime_cli("serve", *args, timeout=60)
        assert result.returncode == status, (args, result.stderr)
        assert words in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
