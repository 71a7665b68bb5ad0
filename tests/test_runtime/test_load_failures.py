"""A model that cannot serve within its pod ends the start with ModelLoadFailed and the
reason (one line on stderr, and the termination message the operator reads), never a
traceback, and never ready with no memory left for requests."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from modelplane_testkit.runtime_server import free_port, run_runtime_cli

MIB = 1024 * 1024


def _fixed_identity(path: Path, shape: list[int]) -> Path:
    """x FP32 ``shape`` -> y = x: warm-up must allocate the whole fixed shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, str(path))
    return path


def _serve_fails(model: Path, tmp_path: Path, **env: str) -> tuple[str, str]:
    """(last line of stderr, termination message) of a start that must fail."""
    message = tmp_path / "termination-log"
    message.write_text("")
    result = run_runtime_cli(
        "serve",
        "--model",
        str(model),
        "--port",
        str(free_port()),
        env={"MODELPLANE_TERMINATION_MESSAGE_PATH": str(message), **env},
        timeout=90,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()[-1], message.read_text()


def test_a_model_that_leaves_no_memory_for_requests_does_not_start(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # The runtime alone uses more than 64 MiB once the model is loaded and warmed up.
    last, message = _serve_fails(
        models["relu"], tmp_path, MODELPLANE_MEMORY_LIMIT_BYTES=str(64 * MIB)
    )
    assert "leaves no memory for requests" in last
    assert message.startswith("ModelLoadFailed: the model leaves no memory for requests")
    assert "memory limit of 64 MiB" in message


@pytest.mark.parametrize(
    ("shape", "env", "reason"),
    [
        ([1 << 40, 1 << 40], {}, "warm-up cannot allocate input 'x'"),  # 2^80 elements
        (  # 256 GiB
            [1 << 20, 1 << 16],
            {"MODELPLANE_MEMORY_LIMIT_BYTES": str(1 << 34)},
            "more than the memory limit of 16384 MiB",
        ),
    ],
)
def test_a_fixed_input_that_cannot_be_allocated_does_not_start(
    tmp_path: Path, shape: list[int], env: dict[str, str], reason: str
) -> None:
    model = _fixed_identity(tmp_path / "huge.onnx", shape)
    last, message = _serve_fails(model, tmp_path, **env)
    assert reason in last
    assert message.startswith("ModelLoadFailed: ")
    assert reason in message
