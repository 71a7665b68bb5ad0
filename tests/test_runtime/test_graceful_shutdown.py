"""SIGTERM: readiness false at once, every request in flight answered, then exit 0."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer

IN_FLIGHT = 12
ROWS = 64


def test_sigterm_loses_no_request_in_flight(tmp_path: Path, logs: Path) -> None:
    # ~0.5 s per request on one thread: most are still queued when SIGTERM lands.
    model = onnx_models.slow_loop(tmp_path / "slow.onnx", width=1024, iterations=250)
    env = {
        "MODELPLANE_MAX_BATCH_SIZE": "1",
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_WARMUP_ITERATIONS": "0",
    }
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((ROWS, 1024)).astype(np.float32) for _ in range(IN_FLIGHT)]
    bodies = [
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [ROWS, 1024],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        for x in inputs
    ]
    server = RuntimeServer(["--model", str(model)], env=env, log_dir=logs).wait_live()
    try:
        url = server.url + "/v2/models/slow/infer"
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(requests.post, url, data=body, timeout=120) for body in bodies]
            deadline = time.monotonic() + 30
            while True:  # every request has reached the server: pending or answered
                pending = server.metric("modelplane_pending_requests", model="slow")
                if pending + sum(f.done() for f in futures) >= IN_FLIGHT:
                    break
                assert time.monotonic() < deadline, "requests never arrived"
                time.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            assert pending >= IN_FLIGHT // 2, "too few requests in flight to prove anything"
            time.sleep(0.2)
            # Not ready any more: refused, or 503 while the listener closes.
            try:
                ready = requests.get(server.url + "/v2/health/ready", timeout=5).status_code
            except requests.ConnectionError:
                ready = 0
            assert ready in (0, 503)
            responses = [f.result(timeout=120) for f in futures]
        exit_code = server.process.wait(timeout=60)
    finally:
        server.terminate()
    session = ort.InferenceSession(str(model))
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        (want,) = session.run(None, {"x": x})
        got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    assert exit_code == 0
    assert "finishing requests in flight" in server.log()
