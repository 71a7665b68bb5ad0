"""Provider choice and the no-silent-CPU-fallback rule.

No GPU here: selection is proven with stubbed provider lists and a stubbed
session, and the real server is shown refusing readiness when CUDA is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.model import (
    ModelLoadError,
    OnnxModel,
    check_provider_in_use,
    choose_providers,
)
from modelplane_testkit.runtime_server import RuntimeServer, run_runtime_cli

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]
CPU_BUILD = ["AzureExecutionProvider", CPU]


@pytest.mark.parametrize(
    ("requested", "available", "fallback", "chosen"),
    [
        ([CPU], CPU_BUILD, False, [CPU]),
        ([CUDA, CPU], GPU_BUILD, False, [CUDA, CPU]),
        ([TRT, CUDA, CPU], GPU_BUILD, False, [TRT, CUDA, CPU]),
        ([TRT, CUDA, CPU], [CUDA, CPU], False, [CUDA, CPU]),
        ([CUDA, CPU], CPU_BUILD, True, [CPU]),
    ],
)
def test_choose_providers(
    requested: list[str], available: list[str], fallback: bool, chosen: list[str]
) -> None:
    assert choose_providers(requested, available, allow_cpu_fallback=fallback) == chosen


def test_gpu_requested_without_gpu_is_refused_unless_fallback() -> None:
    with pytest.raises(ModelLoadError, match="allowCpuFallback") as refused:
        choose_providers([CUDA, CPU], CPU_BUILD, allow_cpu_fallback=False)
    assert "CUDAExecutionProvider requested" in refused.value.message


def test_onnxruntime_quietly_falling_back_is_caught() -> None:
    # onnxruntime-gpu without working CUDA libraries runs on CPU with only a warning.
    with pytest.raises(ModelLoadError, match="could not start CUDAExecutionProvider"):
        check_provider_in_use([CUDA, CPU], [CPU], allow_cpu_fallback=False)
    assert check_provider_in_use([CUDA, CPU], [CPU], allow_cpu_fallback=True) == CPU
    assert check_provider_in_use([CUDA, CPU], [CUDA, CPU], allow_cpu_fallback=False) == CUDA


class _StubSession:
    """Stands in for an onnxruntime session on a GPU node."""

    def __init__(self, real: Any, providers: list[str]) -> None:
        self._real = real
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_gpu_node_serves_on_cuda(models: dict[str, Path]) -> None:
    asked: list[list[str]] = []

    def factory(path: str, options: Any, providers: list[str]) -> Any:
        asked.append(providers)
        real = ort.InferenceSession(path, sess_options=options, providers=[CPU])
        return _StubSession(real, providers)

    settings = RuntimeSettings(model_path=models["relu"], execution_providers=(CUDA, CPU))
    model = OnnxModel.load(settings, available_providers=GPU_BUILD, session_factory=factory)
    assert asked == [[CUDA, CPU]]
    assert model.provider == CUDA
    assert model.metadata()["parameters"]["execution_provider"] == CUDA


def test_real_server_without_gpu_exits_saying_why(models: dict[str, Path], tmp_path: Path) -> None:
    """Never a silent CPU fallback: the process exits with the reason, and in a pod leaves
    it as its termination message for the operator (ModelDeployment reason ModelLoadFailed)."""
    termination = tmp_path / "termination-log"
    termination.touch()  # the kubelet creates it in a pod; absent on a laptop
    env = {
        "MODELPLANE_EXECUTION_PROVIDERS": f"{CUDA},{CPU}",
        "MODELPLANE_TERMINATION_MESSAGE_PATH": str(termination),
    }
    result = run_runtime_cli("serve", "--model", str(models["relu"]), env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CUDAExecutionProvider requested" in result.stderr
    assert "allowCpuFallback" in result.stderr
    message = termination.read_text()
    assert message.startswith("ModelLoadFailed: CUDAExecutionProvider requested")


def test_real_server_with_fallback_serves_on_cpu_and_reports_it(
    models: dict[str, Path], logs: Path
) -> None:
    env = {
        "MODELPLANE_EXECUTION_PROVIDERS": f"{CUDA},{CPU}",
        "MODELPLANE_ALLOW_CPU_FALLBACK": "true",
    }
    with RuntimeServer(["--model", str(models["relu"])], env=env, log_dir=logs) as server:
        assert server.get("/v2/health/ready").status_code == 200
        metadata = server.get("/v2/models/relu").json()
        assert metadata["parameters"]["execution_provider"] == CPU
        assert server.metric("modelplane_model_info", model="relu", execution_provider=CPU) == 1
        assert "serving on CPU because allowCpuFallback is set" in server.log()


def test_unservable_models_exit_with_the_reason(models: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    cases = [
        (["--model", str(models["bf16"])], {}, "tensor(bfloat16)"),
        (["--model", str(corrupt)], {}, "onnxruntime cannot load"),
        (
            ["--model", str(models["relu"])],
            {"MODELPLANE_MODEL_SHA256": "0" * 64},
            "refusing to serve",
        ),
    ]
    for args, env, reason in cases:
        result = run_runtime_cli("serve", *args, env=env, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: "), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert reason in result.stderr
