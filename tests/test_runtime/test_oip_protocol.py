"""The OIP REST API through the real server, checked against onnxruntime directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from modelplane_testkit.runtime_server import RuntimeServer


def _infer(server: RuntimeServer, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_server_and_model_metadata(relu_server: RuntimeServer) -> None:
    assert relu_server.get("/v2").json()["name"] == "modelplane"
    assert relu_server.get("/v2/health/live").json() == {"live": True}
    assert relu_server.get("/v2/health/ready").json() == {"ready": True}
    assert relu_server.get("/v2/models/relu/ready").json() == {"name": "relu", "ready": True}
    metadata = relu_server.get("/v2/models/relu").json()
    assert metadata["name"] == "relu"
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["relu", "double"]
    assert metadata["parameters"]["execution_provider"] == "CPUExecutionProvider"
    # BentoML's own endpoints stand beside the OIP ones.
    assert relu_server.get("/readyz").status_code == 200
    assert relu_server.get("/livez").status_code == 200


def test_round_trip_matches_onnxruntime(
    relu_server: RuntimeServer, models: dict[str, Path]
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(models["relu"])).run(None, {"x": x})
    body = {
        "id": "req-42",
        "parameters": {"priority": 1},
        "inputs": [
            {
                "name": "x",
                "shape": [3, 4],
                "datatype": "FP32",
                "data": x.ravel().tolist(),
                "parameters": {"content_type": "np"},
            }
        ],
    }
    result = _infer(relu_server, "relu", body)
    assert result["id"] == "req-42"
    assert result["model_name"] == "relu"
    outputs = {o["name"]: o for o in result["outputs"]}
    assert list(outputs) == ["relu", "double"]
    for name, want in zip(["relu", "double"], expected, strict=True):
        assert outputs[name]["datatype"] == "FP32"
        assert outputs[name]["shape"] == [3, 4]
        np.testing.assert_array_equal(
            np.asarray(outputs[name]["data"], dtype=np.float32).reshape(3, 4), want
        )


def test_output_selection_nested_data_and_versioned_route(relu_server: RuntimeServer) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[-1.0, 2.0, -3.0, 4.0]]}
        ],
        "outputs": [{"name": "double"}],
    }
    result = _infer(relu_server, "relu/versions/1", body)
    assert "id" not in result
    assert result["outputs"] == [
        {"name": "double", "datatype": "FP32", "shape": [1, 4], "data": [-2.0, 4.0, -6.0, 8.0]}
    ]


@pytest.fixture(scope="module")
def types_server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["types"])], log_dir=logs) as server:
        yield server


SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, False, False, True],
    "UINT8": [0, 1, 255, 7, 8, 9],
    "UINT16": [0, 65535, 2, 3, 4, 5],
    "UINT32": [0, 4294967295, 2, 3, 4, 5],
    "UINT64": [0, 18446744073709551615, 2, 3, 4, 5],
    "INT8": [-128, 127, 0, 1, -1, 5],
    "INT16": [-32768, 32767, 0, 1, -1, 5],
    "INT32": [-2147483648, 2147483647, 0, 1, -1, 5],
    "INT64": [-9223372036854775808, 9223372036854775807, 0, 1, -1, 5],
    "FP16": [0.5, -1.5, 65504.0, 0.0, 1.0, 2.0],
    "FP32": [0.1, -2.5, 3.4e38, 0.0, 1.0, 2.0],
    "FP64": [0.1, -2.5, 1.7e308, 0.0, 1.0, 2.0],
}


def test_every_datatype_round_trips(types_server: RuntimeServer) -> None:
    body = {
        "inputs": [
            {"name": f"in_{dt}", "shape": [2, 3], "datatype": dt, "data": data}
            for dt, data in SAMPLES.items()
        ]
    }
    result = _infer(types_server, "types", body)
    outputs = {o["name"]: o for o in result["outputs"]}
    for dt, data in SAMPLES.items():
        out = outputs[f"out_{dt}"]
        assert out["datatype"] == dt
        assert out["shape"] == [2, 3]
        if dt in {"FP16", "FP32"}:
            want = np.asarray(data, dtype=np.float16 if dt == "FP16" else np.float32)
            np.testing.assert_array_equal(np.asarray(out["data"], dtype=want.dtype), want)
        else:
            assert out["data"] == data, dt


def test_non_finite_outputs_stay_valid_json(models: dict[str, Path], logs: Path) -> None:
    with RuntimeServer(["--model", str(models["recip"])], log_dir=logs) as server:
        body = {
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.0, -0.0, 4.0]}]
        }
        response = server.post("/v2/models/recip/infer", json=body)
        assert response.status_code == 200
        assert "Infinity" in response.text  # strict JSON parsing below would reject NaN/Infinity
        assert response.json()["outputs"][0]["data"] == ["Infinity", "-Infinity", 0.25]
        # The same spellings are accepted on input.
        body["inputs"][0]["data"] = ["Infinity", "NaN", 2.0]
        again = server.post("/v2/models/recip/infer", json=body).json()["outputs"][0]["data"]
        assert again == [0.0, "NaN", 0.5]


def test_missing_input_names_each_missing_one(types_server: RuntimeServer) -> None:
    body = {"inputs": [{"name": "in_FP32", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = types_server.post("/v2/models/types/infer", json=body)
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("missing input 'in_BOOL' (BOOL [-1, 3])")
    assert "'in_FP32'" not in message
