"""Warm-up with representative shapes: run before the server is ready, and a shape that
cannot run stops the start with the reason."""

from __future__ import annotations

import json
from pathlib import Path

from modelplane_testkit.runtime_server import RuntimeServer, run_runtime_cli


def test_declared_shapes_are_warmed_up_before_ready(models: dict[str, Path], logs: Path) -> None:
    shapes = json.dumps([{"x": [1, 4]}, {"x": [64, 4]}])
    env = {"MODELPLANE_WARMUP_SHAPES": shapes, "MODELPLANE_WARMUP_ITERATIONS": "2"}
    with RuntimeServer(["--model", str(models["relu"])], env=env, log_dir=logs) as server:
        assert server.get("/v2/health/ready").status_code == 200


def test_a_shape_that_does_not_fit_the_model_stops_the_start(models: dict[str, Path]) -> None:
    for shapes, reason in [
        ([{"x": [2, 5]}], "warm-up shape [2, 5] for input 'x' does not fit the model's [-1, 4]"),
        ([{"y": [2, 4]}], "warm-up shape names input 'y'; the model's inputs are 'x'"),
    ]:
        result = run_runtime_cli(
            "serve",
            "--model",
            str(models["relu"]),
            env={"MODELPLANE_WARMUP_SHAPES": json.dumps(shapes)},
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        last = result.stderr.splitlines()[-1]  # after the log line saying it loaded
        assert last.startswith("error: ")
        assert reason in last
        assert "Traceback" not in result.stderr
