"""gRPC on SIGTERM: new calls refused at once, every call in flight answered, then exit 0;
and a gRPC port that is taken stops the start instead of being shared."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer, free_port, run_runtime_cli

IN_FLIGHT = 12
ROWS = 64


def _request(x: np.ndarray[Any, Any]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(
        model_name="slow", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )


def test_sigterm_refuses_new_calls_and_answers_every_call_in_flight(
    tmp_path: Path, logs: Path
) -> None:
    # ~1 s per call on one thread: most are still queued when SIGTERM lands.
    model = onnx_models.slow_loop(tmp_path / "slow.onnx", width=1024, iterations=500)
    env = {
        "MODELPLANE_MAX_BATCH_SIZE": "1",
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_WARMUP_ITERATIONS": "0",
    }
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal((ROWS, 1024)).astype(np.float32) for _ in range(IN_FLIGHT)]
    server = RuntimeServer(["--model", str(model)], env=env, log_dir=logs).wait_live()
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer.future(_request(x), timeout=120) for x in inputs]
            deadline = time.monotonic() + 60
            while server.metric("modelplane_pending_requests", model="slow") < IN_FLIGHT // 2:
                assert time.monotonic() < deadline, "too few calls ever in flight"
                time.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # A new call is refused (the port no longer listens), while every call already
            # in flight is still answered below.
            with grpc.insecure_channel(server.grpc_target) as late_channel:
                late = pb_grpc.GRPCInferenceServiceStub(late_channel)
                with pytest.raises(grpc.RpcError) as refused:
                    late.ModelInfer(_request(inputs[0]), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            answers = [call.result(timeout=120) for call in calls]
        exit_code = server.process.wait(timeout=60)
    finally:
        server.terminate()
    session = ort.InferenceSession(str(model))
    for x, answer in zip(inputs, answers, strict=True):
        (want,) = session.run(None, {"x": x})
        got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    assert exit_code == 0
    assert "finishing requests in flight" in server.log()


def test_a_grpc_port_in_use_stops_the_start(
    relu_server: RuntimeServer, models: dict[str, Path]
) -> None:
    """Another runtime's port, not shared: grpc sets SO_REUSEPORT by default, and two
    servers on one port would each take part of the calls."""
    port = relu_server.grpc_port
    run = run_runtime_cli(
        "serve", "--model", str(models["relu"]), "--port", str(free_port()),
        "--grpc-port", str(port), timeout=90,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in run.stderr
    assert "--grpc-port" in run.stderr
    assert relu_server.get("/v2/health/ready").status_code == 200
