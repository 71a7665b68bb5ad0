"""Every bad request gets a 4xx with a message naming what is wrong; the server lives on."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelplane_api.spec import parse_model_deployment
from modelplane_operator.analysis import queries
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import Observed, render_hpa
from modelplane_testkit.runtime_server import RuntimeServer
from test_operator.samples import minimal

GOOD_INPUT = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


def _with(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**GOOD_INPUT, **changes}]}


# (case, request body or raw bytes, status, words the error must contain)
CATALOGUE: list[tuple[str, Any, int, list[str]]] = [
    ("malformed-json", b'{"inputs": [', 400, ["not valid JSON"]),
    ("not-an-object", b"[1, 2]", 400, ["JSON object"]),
    ("no-inputs", {"id": "x"}, 400, ["inputs"]),
    ("empty-inputs", {"inputs": []}, 400, ["inputs"]),
    ("input-not-object", {"inputs": [7]}, 400, ["inputs.0"]),
    ("shape-not-list", _with(shape="1,4"), 400, ["shape"]),
    ("unknown-input", _with(name="y"), 400, ["'y'", "'x'"]),
    (
        "duplicate-input",
        {"inputs": [{**GOOD_INPUT, "name": "x"}, {**GOOD_INPUT, "name": "x"}]},
        400,
        ["'x'", "twice"],
    ),
    ("wrong-datatype", _with(datatype="INT64", data=[1, 2, 3, 4]), 400, ["'x'", "INT64", "FP32"]),
    ("unknown-datatype", _with(datatype="FLOAT32"), 400, ["'x'", "FLOAT32", "FP32"]),
    ("wrong-rank", _with(shape=[4]), 400, ["'x'", "[4]", "[-1, 4]"]),
    ("wrong-width", _with(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, ["'x'", "[-1, 4]"]),
    ("too-few-elements", _with(shape=[2, 4]), 400, ["'x'", "4 elements", "needs 8"]),
    ("too-many-elements", _with(data=[1, 2, 3, 4, 5]), 400, ["'x'", "5 elements", "needs 4"]),
    ("negative-dimension", _with(shape=[-1, 4]), 400, ["'x'", "negative"]),
    ("strings-for-floats", _with(data=["a", "b", "c", "d"]), 400, ["'x'", "element 0", "string"]),
    ("booleans-for-floats", _with(data=[True, False, True, False]), 400, ["'x'", "boolean"]),
    ("ragged-nested", _with(data=[[1, 2], [3]]), 400, ["'x'", "3 elements"]),
    (
        "data-missing",
        {"inputs": [{k: v for k, v in GOOD_INPUT.items() if k != "data"}]},
        400,
        ["'x'", "data"],
    ),
    ("unknown-output", {**_with(), "outputs": [{"name": "triple"}]}, 400, ["'triple'", "'relu'"]),
]


@pytest.mark.parametrize(
    ("body", "status", "words"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_bad_request_is_answered_clearly(
    relu_server: RuntimeServer, body: Any, status: int, words: list[str]
) -> None:
    if isinstance(body, bytes):
        response = relu_server.post(
            "/v2/models/relu/infer", data=body, headers={"content-type": "application/json"}
        )
    else:
        response = relu_server.post("/v2/models/relu/infer", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    assert "Traceback" not in response.text
    # The server still serves.
    assert relu_server.post("/v2/models/relu/infer", json=_with()).status_code == 200


def test_unknown_model_and_version_are_404(relu_server: RuntimeServer) -> None:
    for path in ("/v2/models/resnet/infer", "/v2/models/relu/versions/2/infer"):
        response = relu_server.post(path, json=_with())
        assert response.status_code == 404
        assert "not served" in response.json()["error"]
    assert relu_server.get("/v2/models/resnet").status_code == 404
    assert relu_server.get("/v2/models/resnet/ready").status_code == 404


def test_payload_over_the_limit_is_413(relu_server: RuntimeServer) -> None:
    rows = 3000  # ~100 KB of JSON against the fixture's 64 KiB limit
    body = _with(shape=[rows, 4], data=[0.123456] * (rows * 4))
    response = relu_server.post("/v2/models/relu/infer", json=body)
    assert response.status_code == 413
    assert "maxRequestBytes" in response.json()["error"]

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming too
        for _ in range(100):
            yield b" " * 1024

    streamed = relu_server.post("/v2/models/relu/infer", data=chunks())
    assert streamed.status_code == 413
    assert relu_server.post("/v2/models/relu/infer", json=_with()).status_code == 200


def test_failures_and_successes_are_counted(relu_server: RuntimeServer) -> None:
    before_ok = relu_server.metric(
        "modelplane_inference_requests_total", model="relu", outcome="success"
    )
    before_bad = relu_server.metric(
        "modelplane_inference_requests_total", model="relu", outcome="400"
    )
    relu_server.post("/v2/models/relu/infer", json=_with())
    relu_server.post("/v2/models/relu/infer", json=_with(name="nope"))
    assert (
        relu_server.metric("modelplane_inference_requests_total", model="relu", outcome="success")
        == before_ok + 1
    )
    assert (
        relu_server.metric("modelplane_inference_requests_total", model="relu", outcome="400")
        == before_bad + 1
    )
    for histogram in (
        "modelplane_queue_seconds",
        "modelplane_compute_seconds",
        "modelplane_batch_size",
    ):
        assert relu_server.metric(histogram + "_count", model="relu") > 0, histogram
    assert 'modelplane_pending_requests{model="relu"}' in relu_server.get("/metrics").text
    assert relu_server.metric("modelplane_pending_requests", model="relu") == 0


def test_the_hpa_scales_on_a_metric_this_runtime_serves(relu_server: RuntimeServer) -> None:
    """The operator's pendingRequests HPA names a gauge the runtime really exports:
    renaming the runtime's metric alone breaks this test."""
    md = parse_model_deployment(
        minimal(autoscaling={"maxReplicas": 3, "metric": "pendingRequests"})
    )
    hpa = render_hpa(md, OperatorConfig(), Observed())
    assert hpa is not None
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert f'{name}{{model="relu"}}' in relu_server.get("/metrics").text


def test_canary_analysis_asks_about_metrics_this_runtime_serves(
    relu_server: RuntimeServer,
) -> None:
    """Every series the operator's canary analysis queries is exported, and the latency
    histogram counts each inference answered, refused or failed, over REST and over gRPC:
    renaming a metric, or observing it on one path only, breaks this test."""
    asked = queries('namespace="models",pod=~"demo-canary-.*"', 60)
    names = {re.findall(r"(modelplane_\w+)\{", query)[0] for query in asked.values()}
    count = "modelplane_request_seconds_count"
    before = relu_server.metric(count, model="relu")
    relu_server.post("/v2/models/relu/infer", json=_with())
    relu_server.post("/v2/models/relu/infer", json=_with(name="nope"))  # a 400
    client = triton.InferenceServerClient(url=relu_server.grpc_target)
    rows = triton.InferInput("x", [1, 4], "FP32")
    rows.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    client.infer("relu", [rows])
    client.close()
    assert relu_server.metric(count, model="relu") == before + 3
    exported = relu_server.get("/metrics").text
    for name in names:
        assert f"{name}{{" in exported, name
