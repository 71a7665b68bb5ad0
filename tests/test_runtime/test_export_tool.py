"""`python -m modelplane_runtime export`: torch -> ONNX, checked against torch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelplane_testkit.runtime_server import run_runtime_cli

MODULES = '''
import torch


class Noisy(torch.nn.Module):
    """Different on every call: the exported graph cannot match torch."""

    def forward(self, x):
        return x + torch.rand_like(x)


def noisy():
    return Noisy()


def not_a_module():
    return 42


def eight_wide():
    return torch.nn.Linear(8, 2)
'''


def _export(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_runtime_cli("export", *args, cwd=cwd, timeout=300)


def test_export_has_a_dynamic_batch_axis_and_matches_torch(tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    result = _export(
        "modelplane_runtime.examples:tiny_classifier",
        str(out),
        "--input-shape",
        "1,64",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"exported {out}: max abs difference to torch ")
    assert line.endswith(" ok")
    assert not list(tmp_path.glob("*.data")), "weights must live inside the one .onnx file"
    session = ort.InferenceSession(str(out))
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 5):
        (y,) = session.run(None, {"input": np.zeros((batch, 64), np.float32)})
        assert y.shape == (batch, 10)


def test_export_fails_above_tolerance(tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(MODULES)
    result = _export(
        "my_models:noisy", str(tmp_path / "noisy.onnx"), "--input-shape", "2,8", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_export_bad_arguments_give_one_line(tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(MODULES)
    for args in (
        ("my_models:nothing_here", "x.onnx", "--input-shape", "1,4"),
        ("no_colon", "x.onnx", "--input-shape", "1,4"),
        ("my_models:not_a_module", "x.onnx", "--input-shape", "1,4"),
        ("my_models:noisy", "x.onnx", "--input-shape", "1,x"),
        ("my_models:noisy", "x.onnx", "--input-shape", "1,4", "--dtype", "float99"),
        ("my_models:noisy", "x.onnx"),
    ):
        result = _export(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_shape_the_module_cannot_take_is_one_line_not_a_torch_dump(tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(MODULES)
    result = _export("my_models:eight_wide", "x.onnx", "--input-shape", "1,5", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert "--input-shape 1,5: the module does not accept a float32 input" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
