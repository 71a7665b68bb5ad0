"""The Open Inference Protocol over gRPC, through the real server on 127.0.0.1: Triton's
gRPC client works unchanged, raw and typed contents, every refusal a status code with a
message naming the input and the fix, the same limits and metrics as REST."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from modelplane_runtime.grpc_service import guarded
from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer


@pytest.fixture(scope="module")
def relu(relu_server: RuntimeServer) -> Iterator[Any]:
    """A stub on the relu server's gRPC port: for what tritonclient does not send."""
    with grpc.insecure_channel(relu_server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def strings_server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["strings"])], log_dir=logs) as server:
        yield server


@pytest.fixture(scope="module")
def types_server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["types"])], log_dir=logs) as server:
        yield server


def _client(server: RuntimeServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.grpc_target)


def _input(name: str, array: np.ndarray[Any, Any], datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_tritonclient_grpc_works_unchanged(
    relu_server: RuntimeServer, models: dict[str, Path]
) -> None:
    client = _client(relu_server)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("relu")
        assert client.get_server_metadata().name == "modelplane"
        metadata = client.get_model_metadata("relu", as_json=True)
        assert metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
        x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
        result = client.infer(
            "relu",
            [_input("x", x, "FP32")],
            request_id="g-1",
            outputs=[triton.InferRequestedOutput("double")],
        )
    finally:
        client.close()
    (_, want_double) = ort.InferenceSession(str(models["relu"])).run(None, {"x": x})
    assert result.get_response().id == "g-1"
    assert result.get_response().model_name == "relu"
    assert result.as_numpy("relu") is None  # not requested
    np.testing.assert_array_equal(result.as_numpy("double"), want_double)


def test_every_datatype_round_trips_raw(types_server: RuntimeServer) -> None:
    rng = np.random.default_rng(4)
    arrays = {}
    for name in onnx_models.ELEMENT_TYPES:
        dtype = np.dtype(triton_to_np_dtype(name))
        if dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, (2, 3)).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays[name] = np.array([[info.min, 0, info.max]] * 2, dtype=dtype)
        else:
            arrays[name] = rng.standard_normal((2, 3)).astype(dtype)
    client = _client(types_server)
    try:
        result = client.infer(
            "types", [_input(f"in_{name}", array, name) for name, array in arrays.items()]
        )
    finally:
        client.close()
    for name, array in arrays.items():
        assert result.as_numpy(f"out_{name}").dtype == array.dtype, name
        np.testing.assert_array_equal(result.as_numpy(f"out_{name}"), array)


def test_typed_contents_are_answered_typed(relu: Any) -> None:
    request = pb.ModelInferRequest(model_name="relu", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([1, -2, 3, -4, 5, -6, 7, -8])
    answer = relu.ModelInfer(request, timeout=30)
    assert answer.id == "typed"
    assert not answer.raw_output_contents
    by_name = {o.name: o for o in answer.outputs}
    assert list(by_name["relu"].contents.fp32_contents) == [1, 0, 3, 0, 5, 0, 7, 0]
    assert list(by_name["double"].shape) == [2, 4]
    assert list(by_name["double"].contents.fp32_contents)[:2] == [2, -4]


def test_bytes_tensors_raw_and_typed(strings_server: RuntimeServer) -> None:
    words = np.array([["hello", "wörld"], ["", "hello"]], dtype=object)
    client = _client(strings_server)
    try:
        result = client.infer("strings", [_input("x", words, "BYTES")])
    finally:
        client.close()
    shout = result.as_numpy("shout")
    assert [[s.decode() for s in row] for row in shout] == [["hello!", "wörld!"], ["!", "hello!"]]
    assert result.as_numpy("is_hello").tolist() == [[True, False], [False, True]]

    with grpc.insecure_channel(strings_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="strings")
        tensor = request.inputs.add(name="x", datatype="BYTES", shape=[1, 2])
        tensor.contents.bytes_contents.extend(["ä".encode(), b"b"])
        request.outputs.add(name="joined")
        answer = stub.ModelInfer(request, timeout=30)
    assert list(answer.outputs[0].contents.bytes_contents) == ["äb".encode()]


def _tensor(
    name: str = "x", shape: tuple[int, ...] = (1, 4), datatype: str = "FP32"
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


FOUR = np.zeros(4, dtype=np.float32).tobytes()
HOSTILE = {
    "wrong shape": (
        pb.ModelInferRequest(
            model_name="relu", inputs=[_tensor(shape=(1, 5))], raw_input_contents=[FOUR + FOUR[:4]]
        ),
        "input 'x' has shape [1, 5]; the model expects [-1, 4]",
    ),
    "datatype mismatch": (
        pb.ModelInferRequest(
            model_name="relu", inputs=[_tensor(datatype="FP64")], raw_input_contents=[FOUR * 2]
        ),
        "input 'x' has datatype FP64; the model expects FP32",
    ),
    "raw contents of the wrong length": (
        pb.ModelInferRequest(model_name="relu", inputs=[_tensor()], raw_input_contents=[FOUR[:9]]),
        "input 'x': 9 bytes of binary data but shape [1, 4] of FP32 needs 16",
    ),
    "fewer raw contents than inputs": (
        pb.ModelInferRequest(
            model_name="relu", inputs=[_tensor(), _tensor("y")], raw_input_contents=[FOUR]
        ),
        "2 inputs but 1 raw_input_contents; send one raw_input_contents entry per input",
    ),
    "a negative dimension": (
        pb.ModelInferRequest(
            model_name="relu", inputs=[_tensor(shape=(-1, 4))], raw_input_contents=[FOUR]
        ),
        "input 'x': shape [-1, 4] has a negative dimension",
    ),
    "an unknown input": (
        pb.ModelInferRequest(model_name="relu", inputs=[_tensor("z")], raw_input_contents=[FOUR]),
        "unknown input 'z'; the model's inputs are 'x'",
    ),
    "an unknown output": (
        pb.ModelInferRequest(
            model_name="relu",
            inputs=[_tensor()],
            raw_input_contents=[FOUR],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")],
        ),
        "unknown output 'nope'; the model's outputs are 'relu', 'double'",
    ),
    "contents in another type's field": (
        pb.ModelInferRequest(
            model_name="relu",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="x",
                    datatype="FP32",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(int_contents=[1, 2, 3, 4]),
                )
            ],
        ),
        "input 'x' is FP32 but carries int_contents; FP32 goes in fp32_contents",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_bad_request_is_invalid_argument_naming_the_input_and_the_fix(
    relu_server: RuntimeServer, relu: Any, case: str
) -> None:
    request, words = HOSTILE[case]
    before = relu_server.metric("modelplane_inference_requests_total", model="relu", outcome="400")
    with pytest.raises(grpc.RpcError) as refused:
        relu.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in str(refused.value.details())
    assert relu.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    after = relu_server.metric("modelplane_inference_requests_total", model="relu", outcome="400")
    assert after == before + 1


def test_bytes_that_are_not_a_message_are_invalid_argument(relu_server: RuntimeServer) -> None:
    with grpc.insecure_channel(relu_server.grpc_target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\x0a\x04relu\xff\xff\xff", timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in str(refused.value.details())


def test_another_model_or_version_is_not_found(relu: Any) -> None:
    for request in (
        pb.ModelInferRequest(model_name="other", inputs=[_tensor()], raw_input_contents=[FOUR]),
        pb.ModelInferRequest(
            model_name="relu", model_version="2", inputs=[_tensor()], raw_input_contents=[FOUR]
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            relu.ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, request
    with pytest.raises(grpc.RpcError) as unknown:
        relu.ModelReady(pb.ModelReadyRequest(name="other"), timeout=30)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "this server serves 'relu'" in str(unknown.value.details())
    assert relu.ModelReady(pb.ModelReadyRequest(name="relu", version="1"), timeout=30).ready


def test_a_message_over_max_request_bytes_is_resource_exhausted(
    relu_server: RuntimeServer, relu: Any
) -> None:
    rows = 64 * 1024 // 16 + 1  # the server's MODELPLANE_MAX_REQUEST_BYTES is 64 KiB
    request = pb.ModelInferRequest(
        model_name="relu", inputs=[_tensor(shape=(rows, 4))], raw_input_contents=[FOUR * rows]
    )
    with pytest.raises(grpc.RpcError) as refused:
        relu.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    half = rows // 2
    fits = pb.ModelInferRequest(
        model_name="relu", inputs=[_tensor(shape=(half, 4))], raw_input_contents=[FOUR * half]
    )
    assert len(relu.ModelInfer(fits, timeout=30).raw_output_contents[0]) == half * 16


def test_answers_are_counted_as_rest_counts_them(relu_server: RuntimeServer, relu: Any) -> None:
    def count() -> float:
        return relu_server.metric(
            "modelplane_inference_requests_total", model="relu", outcome="success"
        )

    before = count()
    request = pb.ModelInferRequest(model_name="relu", inputs=[_tensor()], raw_input_contents=[FOUR])
    for _ in range(5):
        relu.ModelInfer(request, timeout=30)
    assert count() == before + 5
    assert relu_server.metric("modelplane_pending_requests", model="relu") == 0


def test_a_late_answer_is_deadline_exceeded_and_the_server_stays_up(
    tmp_path: Path, logs: Path
) -> None:
    model = onnx_models.slow_loop(tmp_path / "slow.onnx", width=1024, iterations=None)
    env = {"MODELPLANE_REQUEST_TIMEOUT_SECONDS": "1", "MODELPLANE_WARMUP_ITERATIONS": "0"}
    x = np.zeros((8, 1024), dtype=np.float32)

    def request(trips: int) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(
            model_name="slow",
            inputs=[_tensor("x", x.shape), _tensor("trips", (), "INT64")],
            raw_input_contents=[x.tobytes(), np.int64(trips).tobytes()],
        )

    with (
        RuntimeServer(["--model", str(model)], env=env, log_dir=logs) as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # The server's request timeout (1 s), with no deadline of the client's.
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request(10**9), timeout=None)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no answer within 1s (runtime.requestTimeoutSeconds)" in str(late.value.details())
        # The client's deadline, sooner than the server's.
        with pytest.raises(grpc.RpcError) as impatient:
            stub.ModelInfer(request(10**9), timeout=0.3)
        assert impatient.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A call the client cancels.
        leaving = stub.ModelInfer.future(request(10**9), timeout=None)
        deadline = time.monotonic() + 30
        while server.metric("modelplane_pending_requests", model="slow") < 1:
            assert time.monotonic() < deadline, "the call never reached the server"
        leaving.cancel()
        # The cancelled call's run holds the lane until its own deadline (1 s), and on a
        # loaded machine a call right behind it can pass its own 1 s first: a 504 too.
        # What must hold is that the server answers again; such 504s are counted below.
        queued_late = 0
        for _ in range(10):
            call = stub.ModelInfer.future(request(1), timeout=30)
            if call.exception() is None:
                break
            assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED, call.details()
            queued_late += 1
        assert len(call.result().raw_output_contents) == 1

        def outcome(name: str) -> float:
            return server.metric("modelplane_inference_requests_total", model="slow", outcome=name)

        # Each late call counted once (the two deadlines pass together: either may end it),
        # the cancelled one as REST counts a client that left.
        assert outcome("504") + outcome("client_closed") == 3 + queued_late
        assert outcome("client_closed") >= 1
        assert outcome("success") == 1
        assert server.metric("modelplane_runs_terminated_total", model="slow") >= 1


def test_a_triton_error_reads_as_its_status(relu_server: RuntimeServer) -> None:
    """tritonclient surfaces the status code and the server's message as they are."""
    client = _client(relu_server)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("relu", [_input("x", np.zeros((1, 3), np.float32), "FP32")])
    finally:
        client.close()
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x' has shape [1, 3]" in refused.value.message()


class _Aborted(Exception):
    pass


class _Context:
    """What guarded uses of grpc's servicer context."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


def test_a_bug_is_answered_internal_with_no_exception_text() -> None:
    async def broken(message: bytes, context: Any) -> bytes:
        raise KeyError("secret detail")

    async def refusing(message: bytes, context: Any) -> bytes:
        raise grpc.aio.AbortError

    context = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(guarded(broken)(b"", context))  # type: ignore[arg-type]
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error; see the server log")
    with pytest.raises(grpc.aio.AbortError):  # an answer given already passes through
        asyncio.run(guarded(refusing)(b"", _Context()))  # type: ignore[arg-type]
