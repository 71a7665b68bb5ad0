"""Keys, grants, limits and metering over gRPC: the same access file and the same answers as
REST (401, 403, 429 as UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED), the key in
``authorization`` metadata, through the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from modelplane_api.access import key_digest, new_key
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.runtime_server import RuntimeServer

KEYS = {name: new_key() for name in ("alpha", "beta", "slow", "meter")}
CONSUMERS: list[dict[str, Any]] = [
    {"name": "alpha", "models": ["relu"]},
    {"name": "beta", "models": ["another-model"]},
    {"name": "slow", "models": ["*"], "limits": {"requestsPerSecond": 0.2, "burst": 2}},
    {"name": "meter", "models": ["relu"]},
]


@pytest.fixture(scope="module")
def server(
    models: dict[str, Path], logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeServer]:
    access = AccessDir(tmp_path_factory.mktemp("grpc-access") / "mounted")
    access.publish(
        {"consumers": [{**c, "keys": [{"sha256": key_digest(KEYS[c["name"]])}]} for c in CONSUMERS]}
    )
    args = ["--model", str(models["relu"]), "--access", str(access.file)]
    with RuntimeServer(args, log_dir=logs) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RuntimeServer) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _key(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name]}"),)


def _request(rows: int = 1) -> pb.ModelInferRequest:
    x = (np.arange(rows * 4, dtype=np.float32) - 3).reshape(rows, 4)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(
        model_name="relu", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )


def _refusal(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The refusal a call ends with: its code(), details() and trailing_metadata()."""
    with pytest.raises(grpc.RpcError) as refused:
        call(*args, timeout=30, **kwargs)
    return refused.value


def _trailers(refusal: Any) -> dict[str, str]:
    return {item.key: item.value for item in refusal.trailing_metadata()}


def test_no_key_or_an_unknown_one_is_unauthenticated_with_a_bearer_challenge(
    server: RuntimeServer, stub: Any
) -> None:
    missing = _refusal(stub.ModelInfer, _request())
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Authorization: Bearer" in missing.details()
    assert _trailers(missing)["www-authenticate"] == 'Bearer realm="modelplane"'
    before = server.metric("modelplane_access_refused_total", model="relu", reason="unknown_key")
    unknown = _refusal(
        stub.ModelInfer, _request(), metadata=(("authorization", f"Bearer {new_key()}"),)
    )
    assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    after = server.metric("modelplane_access_refused_total", model="relu", reason="unknown_key")
    assert after == before + 1


def test_probes_need_no_key_but_metadata_does(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    for call, message in (
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="relu")),
        (stub.ModelReady, pb.ModelReadyRequest(name="relu")),
        (stub.ServerMetadata, pb.ServerMetadataRequest()),
    ):
        assert _refusal(call, message).code() == grpc.StatusCode.UNAUTHENTICATED
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="relu"), metadata=_key("alpha"))
    assert metadata.name == "relu"


def test_a_key_not_granted_this_model_is_permission_denied(
    server: RuntimeServer, stub: Any
) -> None:
    refused = _refusal(stub.ModelInfer, _request(), metadata=_key("beta"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'beta' is not granted model 'relu'" in refused.details()
    assert (
        server.metric(
            "modelplane_consumer_requests_total", model="relu", consumer="beta", outcome="403"
        )
        == 1
    )


def test_over_the_request_rate_is_resource_exhausted_with_retry_after(stub: Any) -> None:
    # 0.2 requests/s, burst 2: two pass at once, the third must wait five seconds.
    for _ in range(2):
        stub.ModelInfer(_request(), metadata=_key("slow"), timeout=30)
    limited = _refusal(stub.ModelInfer, _request(), metadata=_key("slow"))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its request rate" in limited.details()
    assert _trailers(limited)["retry-after"] == "5"


def test_a_granted_key_gets_its_answer_and_is_metered(server: RuntimeServer, stub: Any) -> None:
    requests = [_request(rows) for rows in (1, 2, 3)]
    answers = [stub.ModelInfer(r, metadata=_key("meter"), timeout=30) for r in requests]
    assert np.frombuffer(answers[1].raw_output_contents[0], np.float32).tolist()[:4] == [0, 0, 0, 0]
    bad = _request()
    bad.raw_input_contents[0] = b"\0" * 8
    assert _refusal(stub.ModelInfer, bad, metadata=_key("meter")).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    def count(metric: str, **labels: str) -> float:
        return server.metric(metric, model="relu", consumer="meter", **labels)

    assert count("modelplane_consumer_requests_total", outcome="success") == 3
    assert count("modelplane_consumer_requests_total", outcome="400") == 1
    assert count("modelplane_consumer_rows_total") == 6
    sent = sum(r.ByteSize() for r in [*requests, bad])
    assert count("modelplane_consumer_request_bytes_total") == sent
    assert count("modelplane_consumer_response_bytes_total") == sum(a.ByteSize() for a in answers)
    assert count("modelplane_consumer_compute_seconds_total") > 0


def test_tritonclient_grpc_sends_the_key_as_metadata(server: RuntimeServer) -> None:
    client = triton.InferenceServerClient(server.grpc_target)
    try:
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[-1, 0, 1, 2]], dtype=np.float32))
        result = client.infer("relu", [x], headers={"authorization": f"Bearer {KEYS['alpha']}"})
        assert result.as_numpy("relu").tolist() == [[0, 0, 1, 2]]
        with pytest.raises(InferenceServerException, match="needs a key"):
            client.infer("relu", [x])
    finally:
        client.close()
