"""SIGTERM: readiness false at once, every request in flight answered, then exit 0."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests

from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.errors import NotReady
from modelplane_runtime.inference import InferenceEngine
from modelplane_runtime.protocol import InferenceRequest
from modelplane_runtime.service import ready
from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer

IN_FLIGHT = 12
ROWS = 64
LONG_TRIPS = 10000  # several seconds on one thread: the lane is busy while the rest queue
SHORT_TRIPS = 25


def test_sigterm_loses_no_request_in_flight(tmp_path: Path, logs: Path) -> None:
    # One long run holds the lane (one thread, no batching) while the other requests queue
    # behind it: SIGTERM lands with all of them in flight, however slowly a loaded machine
    # uploads and parses their 1.35 MB bodies.
    model = onnx_models.slow_loop(tmp_path / "slow.onnx", width=1024, iterations=None)
    env = {
        "MODELPLANE_MAX_BATCH_SIZE": "1",
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_WARMUP_ITERATIONS": "0",
    }
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((ROWS, 1024)).astype(np.float32) for _ in range(IN_FLIGHT)]
    trips = [LONG_TRIPS] + [SHORT_TRIPS] * (IN_FLIGHT - 1)
    bodies = [
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [ROWS, 1024],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    },
                    {"name": "trips", "shape": [], "datatype": "INT64", "data": [n]},
                ]
            }
        ).encode()
        for x, n in zip(inputs, trips, strict=True)
    ]
    server = RuntimeServer(["--model", str(model)], env=env, log_dir=logs).wait_live()
    try:
        url = server.url + "/v2/models/slow/infer"
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(requests.post, url, data=bodies[0], timeout=300)]
            _wait_for(lambda: server.metric("modelplane_pending_requests", model="slow") >= 1)
            futures += [pool.submit(requests.post, url, data=b, timeout=300) for b in bodies[1:]]
            # SIGTERM once every request is queued or running. One still in the listen
            # backlog or mid-upload would not be in flight: closing the listener resets it,
            # as with any server.
            _wait_for(
                lambda: server.metric("modelplane_pending_requests", model="slow") >= IN_FLIGHT
            )
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # No new connection is accepted (the kubelet's probe fails), while every
            # request already in flight is still answered below.
            with pytest.raises(requests.ConnectionError):
                requests.get(server.url + "/v2/health/ready", timeout=5)
            responses = [f.result(timeout=300) for f in futures]
        exit_code = server.process.wait(timeout=60)
    finally:
        server.terminate()
    session = ort.InferenceSession(str(model))
    for x, n, response in zip(inputs, trips, responses, strict=True):
        assert response.status_code == 200, response.text
        (want,) = session.run(None, {"x": x, "trips": np.array(n, dtype=np.int64)})
        got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    assert exit_code == 0
    assert "finishing requests in flight" in server.log()


def _wait_for(check: Callable[[], bool], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the requests never got in flight"
        time.sleep(0.01)


def test_draining_turns_readiness_false_and_still_answers(tmp_path: Path) -> None:
    """The engine and the readiness route as the server runs them, without the HTTP layer
    that refuses new connections: a drained engine is not ready, and still infers."""
    model = onnx_models.relu_and_double(tmp_path / "relu.onnx")
    engine = InferenceEngine(
        RuntimeSettings(model_name="relu", model_path=model, warmup_iterations=0)
    )
    engine.load()

    async def scenario() -> tuple[int, str, int]:
        engine.start()
        before = (await ready(None, engine)).status_code  # type: ignore[arg-type]
        engine.drain()
        with pytest.raises(NotReady) as refused:
            await ready(None, engine)  # type: ignore[arg-type]
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, -1, 2, -2]}
        request = InferenceRequest.model_validate({"inputs": [tensor]})
        _, outputs = await engine.infer("relu", request)
        await engine.stop()
        return before, refused.value.message, len(outputs)

    before, why, answered = asyncio.run(scenario())
    assert before == 200
    assert why == "the server is shutting down"
    assert answered >= 1


def test_a_keep_alive_client_is_told_to_leave_not_reset(tmp_path: Path, logs: Path) -> None:
    """A keep-alive connection idle when SIGTERM lands still gets its next request answered,
    saying `connection: close` (so the client reconnects through the Service to a pod that
    stays), where closing it at once would meet that request with a reset."""
    model = onnx_models.relu_and_double(tmp_path / "relu.onnx")
    server = RuntimeServer(["--model", str(model)], log_dir=logs).wait_live()
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, -2, 3, -4]}]}
    )
    path = "/v2/models/relu/infer"
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        assert first.getheader("connection") != "close"

        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _accepts(server.port):  # until shutdown has begun: no new connection
            assert time.monotonic() < deadline, "the server kept accepting connections"
            time.sleep(0.02)
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        second = connection.getresponse()
        assert second.status == 200, second.read()
        assert second.getheader("connection") == "close"
        assert json.loads(second.read())["outputs"][0]["data"] == [1, 0, 3, 0]
        connection.close()
        assert server.process.wait(timeout=30) == 0
    finally:
        server.terminate()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
