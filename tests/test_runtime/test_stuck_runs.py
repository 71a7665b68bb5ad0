"""A run that outlives its request's deadline: onnxruntime is told to terminate it, so the
compute lane serves the next request; one that will not stop (a single long operator)
fails readiness while it runs, and does not hold up SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import STOP_TIMEOUT, RuntimeServer

TIMEOUT = 1  # MODELPLANE_REQUEST_TIMEOUT_SECONDS
WIDTH = 64
ENV = {
    "MODELPLANE_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT),
    "MODELPLANE_INTRA_OP_THREADS": "1",
    "MODELPLANE_WARMUP_ITERATIONS": "0",
}


def _nms_model(path: Path) -> Path:
    """NonMaxSuppression keeping every box: quadratic in the boxes, in one operator, which
    onnxruntime does not interrupt when told to terminate."""
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "most", "iou"], ["kept"])],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, "n"]),
        ],
        [helper.make_tensor_value_info("kept", TensorProto.INT64, ["k", 3])],
        initializer=[
            numpy_helper.from_array(np.array([1 << 40], dtype=np.int64), "most"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "iou"),
        ],
    )
    return onnx_models.save_graph(graph, path)


def _loop_request(x: np.ndarray[Any, Any], trips: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "trips", "shape": [], "datatype": "INT64", "data": [trips]},
        ]
    }


def _until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_run_past_the_deadline_is_terminated_and_the_lane_serves_again(
    tmp_path: Path, logs: Path
) -> None:
    model = onnx_models.slow_loop(tmp_path / "loop.onnx", width=WIDTH, iterations=None)
    x = np.random.default_rng(1).standard_normal((2, WIDTH)).astype(np.float32)
    with RuntimeServer(["--model", str(model)], env=ENV, log_dir=logs) as server:
        endless = server.post("/v2/models/loop/infer", json=_loop_request(x, 1 << 40))
        assert endless.status_code == 504, endless.text
        # The lane is free again: without termination this one would wait behind the
        # endless run and get 504 as well.
        answer = server.post("/v2/models/loop/infer", json=_loop_request(x, 3))
        assert answer.status_code == 200, answer.text
        (want,) = ort.InferenceSession(str(model)).run(None, {"x": x, "trips": np.array(3)})
        got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)
        assert server.metric("modelplane_runs_terminated_total", model="loop") == 1
        assert server.get("/v2/health/ready").status_code == 200
        assert server.terminate() == 0


def test_a_run_that_will_not_stop_fails_readiness_and_does_not_hold_up_sigterm(
    tmp_path: Path, logs: Path
) -> None:
    model = _nms_model(tmp_path / "nms.onnx")
    count = 250_000  # every box kept: about n^2/2 comparisons, most of a minute at least
    boxes = np.zeros((1, count, 4), dtype=np.float32)
    boxes[0, :, 0] = np.arange(count) * 2  # side by side, none overlapping
    boxes[0, :, 2] = boxes[0, :, 0] + 1
    boxes[0, :, 3] = 1
    scores = np.random.default_rng(2).random((1, 1, count)).astype(np.float32)
    blobs = [boxes.tobytes(), scores.tobytes()]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
                for name, array, blob in zip(
                    ("boxes", "scores"), (boxes, scores), blobs, strict=True
                )
            ]
        }
    ).encode()
    server = RuntimeServer(["--model", str(model)], env=ENV, log_dir=logs).wait_live()
    try:
        late = server.post(
            "/v2/models/nms/infer",
            data=header + b"".join(blobs),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert late.status_code == 504, late.text

        def stuck() -> bool:
            answer = server.get("/v2/health/ready")
            return answer.status_code == 503 and "compute lane is stuck" in answer.json()["error"]

        assert _until(stuck, 30), server.log()
        server.process.terminate()  # SIGTERM
        exit_code = server.process.wait(timeout=STOP_TIMEOUT)
    finally:
        server.terminate()
    assert exit_code == 1  # it left a run behind, and says so
    assert "did not stop within" in server.log()
