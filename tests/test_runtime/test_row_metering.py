"""Rows are counted on the model's batch axis, whatever order the inputs are listed in;
the row limit is checked from the declared shapes before any data is decoded; rows of
refused requests are not billed as inferred but counted apart. Real server, real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from modelplane_api.access import key_digest, new_key
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.runtime_server import RuntimeServer

KEY = new_key()
ROWS_PER_SECOND = 4


def _scaled(path: Path) -> Path:
    """scale FP32 [] and x FP32 [batch, 4] -> y = x * scale: a batch axis on one input only."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Iterator[RuntimeServer]:
    folder = tmp_path_factory.mktemp("rows")
    access = AccessDir(folder / "mounted")
    limits = {"requestsPerSecond": 1000, "burst": 1000, "rowsPerSecond": ROWS_PER_SECOND}
    consumer = {
        "name": "rows",
        "models": ["scaled"],
        "keys": [{"sha256": key_digest(KEY)}],
        "limits": limits,
    }
    access.publish({"consumers": [consumer]})
    model = _scaled(folder / "scaled.onnx")
    args = ["--model", str(model), "--access", str(access.file)]
    with RuntimeServer(args, log_dir=logs) as running:
        yield running


def _request(rows: int, x_data: Any = None) -> dict[str, Any]:
    x = np.arange(rows * 4, dtype=np.float32).tolist() if x_data is None else x_data
    return {
        "inputs": [  # the scalar first: it must not make the request one row
            {"name": "scale", "shape": [], "datatype": "FP32", "data": [2.0]},
            {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x},
        ]
    }


def _infer(server: RuntimeServer, body: dict[str, Any]) -> requests.Response:
    return server.post(
        "/v2/models/scaled/infer", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )


def _count(server: RuntimeServer, metric: str, **labels: str) -> float:
    return server.metric(metric, model="scaled", consumer="rows", **labels)


def test_rows_come_from_the_batch_axis_and_refusals_are_billed_apart(
    server: RuntimeServer,
) -> None:
    served = _infer(server, _request(3))
    assert served.status_code == 200, served.text
    assert served.json()["outputs"][0]["data"] == [2.0 * v for v in range(12)]
    # A second's worth is 4 rows: 3 more must wait, listed after a scalar or not.
    refused = _infer(server, _request(3))
    assert refused.status_code == 429, refused.text
    assert "this request has 3 rows" in refused.json()["error"]
    # Over the limit with data that would not even decode: refused from its declared
    # shape, before the data is read.
    undecodable = _infer(server, _request(3, x_data=["not", "numbers"]))
    assert undecodable.status_code == 429, undecodable.text

    assert _count(server, "modelplane_consumer_requests_total", outcome="success") == 1
    assert _count(server, "modelplane_consumer_requests_total", outcome="429") == 2
    assert _count(server, "modelplane_consumer_rows_total") == 3  # what ran
    assert _count(server, "modelplane_consumer_refused_rows_total") == 6  # counted apart
