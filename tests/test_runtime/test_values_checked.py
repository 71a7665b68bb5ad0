"""Values are checked, not coerced: on the small-body path and on the large-body path
(bodies from 64 KiB, whose data arrays are decoded a window at a time), in JSON and in
the binary tensor extension, through the real server."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelplane_runtime.errors import BadRequest, PayloadTooLarge
from modelplane_runtime.json_tensors import DataText, decode_data, parse_body
from modelplane_runtime.protocol import ENCODE_CHUNK, tensor_to_wire
from modelplane_testkit.runtime_server import RuntimeServer

ROWS = 4096  # [4096, 4] FP32 as JSON is well over the 64 KiB small-body threshold


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["relu"])], log_dir=logs) as running:
        yield running


@pytest.fixture(scope="module")
def ragged(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["ragged"])], log_dir=logs) as running:
        yield running


@pytest.fixture(scope="module")
def types(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["types"])], log_dir=logs) as running:
        yield running


def _request(data: Any, shape: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}


def _small(bad: Any, at: int = 2) -> tuple[Any, list[int]]:
    data: list[Any] = [1.0, 2.0, 3.0, 4.0]
    data[at] = bad
    return data, [1, 4]


def _large(bad: Any, at: int = ROWS * 4 - 3) -> tuple[Any, list[int]]:
    data: list[Any] = [0.5] * (ROWS * 4)
    data[at] = bad
    return data, [ROWS, 4]


# (case, bad value, words the error must hold)
BAD_VALUES: list[tuple[str, Any, list[str]]] = [
    ("null", None, ["null", "expected a number (FP32)"]),
    ("fp32-overflow", 1e39, ["1e+39", "overflows FP32"]),
    ("boolean-among-numbers", True, ["true, a boolean"]),
    ("numeric-string", "1", ['"1", a string']),
    ("other-string", "nan", ['"nan", a string', "NaN"]),
]


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(
    ("bad", "words"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES]
)
def test_a_value_that_does_not_fit_is_a_400_naming_input_and_position(
    server: RuntimeServer, size: str, bad: Any, words: list[str]
) -> None:
    data, shape = _small(bad) if size == "small" else _large(bad)
    position = 2 if size == "small" else ROWS * 4 - 3
    answer = server.post("/v2/models/relu/infer", json=_request(data, shape))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert f"input 'x': element {position} " in error
    for word in words:
        assert word in error
    assert server.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("size", ["small", "large"])
def test_the_spelled_non_finite_values_are_accepted(server: RuntimeServer, size: str) -> None:
    data, shape = _small("NaN") if size == "small" else _large("-Infinity")
    data[0] = "Infinity"
    answer = server.post("/v2/models/relu/infer", json=_request(data, shape))
    assert answer.status_code == 200, answer.text
    relu = {o["name"]: o for o in answer.json()["outputs"]}["relu"]
    assert relu["data"][0] == "Infinity"


@pytest.mark.parametrize("shape", [[True, 4], [1.0, 4], ["1", 4], [1, 4.0]])
def test_a_shape_must_be_integers(server: RuntimeServer, shape: list[Any]) -> None:
    answer = server.post("/v2/models/relu/infer", json=_request([1, 2, 3, 4], shape))
    assert answer.status_code == 400, answer.text
    assert "shape" in answer.json()["error"]


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([[1, 2], [3, 4]], [1, 4]),  # 4 elements, nested as [2, 2]
        ([[1], [2], [3], [4]], [1, 4]),
        ([[1, 2, 3, 4], []], [1, 4]),
        ([[[1, 2, 3, 4]]], [1, 4]),
        ([[1.0] * 4] * (ROWS // 2), [ROWS // 2, 4]),  # right, as a control
    ],
)
def test_nested_data_must_follow_the_shape(
    server: RuntimeServer, data: list[Any], shape: list[int]
) -> None:
    answer = server.post("/v2/models/relu/infer", json=_request(data, shape))
    if shape[0] > 1:
        assert answer.status_code == 200, answer.text
        return
    assert answer.status_code == 400, answer.text
    assert "nested exactly as shape [1, 4]" in answer.json()["error"]


def test_a_large_request_with_data_elsewhere_and_escapes_round_trips(server: RuntimeServer) -> None:
    """The large-body path cuts out only inputs' data; 'data' keys elsewhere, and text that
    looks like one inside strings, reach the envelope unchanged."""
    x = np.linspace(-1, 1, ROWS * 4, dtype=np.float32)
    body = {
        "id": 'tricky \\"data\\": [1, 2] "data": [',
        "parameters": {"data": [1, 2, 3], "note": {"data": [[True, None]]}},
        "inputs": [{"name": "x", "shape": [ROWS, 4], "datatype": "FP32", "data": x.tolist()}],
    }
    answer = server.post("/v2/models/relu/infer", data=json.dumps(body))
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == body["id"]
    doubled = {o["name"]: o for o in answer.json()["outputs"]}["double"]
    np.testing.assert_allclose(doubled["data"], (x * 2).tolist(), rtol=1e-6)


# --- the binary tensor extension: the same checks -------------------------------------------


def _binary(inputs: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(b)}}
            for n, t, s, b in inputs
        ]
    }
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in inputs), {
        "Inference-Header-Content-Length": str(len(head))
    }


def test_binary_negative_dimensions_are_a_400(ragged: RuntimeServer) -> None:
    body, headers = _binary([("x", "FP32", [-2, -2], struct.pack("<4f", 1, 2, 3, 4))])
    answer = ragged.post("/v2/models/ragged/infer", data=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert "negative dimension" in answer.json()["error"]
    assert ragged.metric("modelplane_inference_requests_total", model="ragged", outcome="500") == 0


def test_binary_bool_bytes_must_be_0_or_1(types: RuntimeServer) -> None:
    body, headers = _binary([("in_BOOL", "BOOL", [1, 3], bytes([1, 0, 2]))])
    answer = types.post("/v2/models/types/infer", data=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert "byte 2 of BOOL data is 2" in answer.json()["error"]


# --- the decoder itself ---------------------------------------------------------------------


def test_fp16_overflow_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"element 1 .* overflows FP16"):
        decode_data("input 'h'", [1.0, 1e6], [2], np.dtype(np.float16), "FP16")


def test_parse_body_cuts_out_only_numeric_input_data() -> None:
    data = list(range(30_000))
    body = json.dumps(
        {"inputs": [{"name": "a", "data": data}, {"name": "b", "data": [{"x": 1}]}]}
    ).encode()
    document = parse_body(body)
    first, second = document["inputs"]
    assert isinstance(first["data"], DataText)
    assert second["data"] == [{"x": 1}]
    decoded = decode_data("input 'a'", first["data"], [30_000], np.dtype(np.int64), "INT64")
    assert decoded.tolist() == data


def test_the_envelope_outside_numeric_data_is_bounded() -> None:
    body = json.dumps({"inputs": [], "parameters": {"blob": "x" * (5 * 1024 * 1024)}}).encode()
    with pytest.raises(PayloadTooLarge, match="outside numeric 'data' arrays"):
        parse_body(body)


def test_an_unclosed_data_array_is_invalid_json() -> None:
    with pytest.raises(BadRequest, match="never closed"):
        parse_body(b'{"inputs": [{"data": [' + b"1," * 40_000)


def test_a_large_output_is_written_in_chunks_exactly() -> None:
    values = np.linspace(-3, 3, ENCODE_CHUNK * 3 + 7, dtype=np.float32)
    values[ENCODE_CHUNK + 1] = np.nan
    values[-1] = -np.inf
    wire = json.loads(orjson.dumps(tensor_to_wire("y", values.reshape(-1, 1))))
    assert wire["shape"] == [values.size, 1]
    assert wire["data"][ENCODE_CHUNK + 1] == "NaN"
    assert wire["data"][-1] == "-Infinity"
    finite = [v for v in wire["data"] if not isinstance(v, str)]
    np.testing.assert_array_equal(np.array(finite, dtype=np.float32), values[np.isfinite(values)])
