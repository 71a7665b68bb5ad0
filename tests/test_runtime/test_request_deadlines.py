"""Deadlines: an inference that takes too long is answered 504, a request whose body
never arrives is answered 504 when the request timeout is shorter than the body's idle
limit (a stall within it: see test_hostile_clients), and the server keeps serving."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from modelplane_testkit import onnx_models, raw_http
from modelplane_testkit.runtime_server import RuntimeServer

TIMEOUT = 1  # MODELPLANE_REQUEST_TIMEOUT_SECONDS


def _body(rows: int) -> bytes:
    x = np.random.default_rng(0).standard_normal((rows, 1024)).astype(np.float32)
    tensor = {"name": "x", "shape": [rows, 1024], "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def test_inference_over_the_timeout_is_504_and_the_server_stays_up(
    tmp_path: Path, logs: Path
) -> None:
    model = onnx_models.slow_loop(tmp_path / "slow.onnx", width=1024, iterations=250)
    env = {
        "MODELPLANE_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT),
        "MODELPLANE_MAX_BATCH_SIZE": "1",
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_WARMUP_ITERATIONS": "0",
    }
    with RuntimeServer(["--model", str(model)], env=env, log_dir=logs).wait_live() as server:
        body = _body(64)  # about half a second each, one at a time: most wait too long
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: server.post("/v2/models/slow/infer", data=body), range(8))
            )
        late = [a for a in answers if a.status_code == 504]
        assert late, [a.status_code for a in answers]
        assert all(a.status_code in {200, 504} for a in answers)
        assert f"within {TIMEOUT}s" in late[0].json()["error"]
        assert server.metric(
            "modelplane_inference_requests_total", model="slow", outcome="504"
        ) == len(late)
        assert server.get("/v2/health/ready").status_code == 200


def test_a_body_that_never_arrives_gets_504_within_the_request_timeout(
    tmp_path: Path, logs: Path
) -> None:
    model = onnx_models.relu_and_double(tmp_path / "relu.onnx")
    env = {"MODELPLANE_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT)}
    with RuntimeServer(["--model", str(model)], env=env, log_dir=logs).wait_live() as server:
        started = time.monotonic()
        answer = raw_http.exchange(
            server.port, raw_http.infer_request("relu", b'{"inputs"', content_length=1000)
        )
        waited = time.monotonic() - started
        assert answer.status == 504, answer
        assert answer.json()["error"].startswith("no answer within 1s")
        assert TIMEOUT <= waited < TIMEOUT + 10  # the body's idle limit (10 s) never came
        assert server.metric("modelplane_inference_requests_total", model="relu", outcome="504")
        ok = server.post(
            "/v2/models/relu/infer",
            json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]},
        )
        assert ok.status_code == 200, ok.text
