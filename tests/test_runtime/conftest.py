"""Models built in code and real runtime servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "relu": onnx_models.relu_and_double(folder / "relu.onnx"),
        "types": onnx_models.identity_per_datatype(folder / "types.onnx"),
        "fixed": onnx_models.fixed_batch(folder / "fixed.onnx"),
        "ragged": onnx_models.ragged_width(folder / "ragged.onnx"),
        "recip": onnx_models.reciprocal(folder / "recip.onnx"),
        "chain": onnx_models.matmul_chain(folder / "chain.onnx"),
        "strings": onnx_models.string_input(folder / "strings.onnx"),
        "bf16": onnx_models.bfloat16_input(folder / "bf16.onnx"),
    }


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def relu_server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    env = {"MODELPLANE_MAX_REQUEST_BYTES": str(64 * 1024)}
    with RuntimeServer(["--model", str(models["relu"])], env=env, log_dir=logs) as server:
        yield server
