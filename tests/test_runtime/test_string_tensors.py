"""BYTES tensors (onnxruntime string tensors) in JSON and in binary, through the real
server and tritonclient, compared with onnxruntime itself; checked like any datatype."""

from __future__ import annotations

import concurrent.futures
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from modelplane_testkit.runtime_server import RuntimeServer

TEXT = [["hello", "wörld"], ["héllo", "hello"], ["", "日本"]]


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["strings"])], log_dir=logs) as running:
        yield running


def _expected(models: dict[str, Path], rows: list[list[str]]) -> dict[str, Any]:
    session = ort.InferenceSession(str(models["strings"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.array(rows, dtype=object)
    return dict(zip(names, session.run(None, {"x": x}), strict=True))


def _request(data: Any, shape: list[int]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "BYTES", "data": data}]}


def test_metadata_names_bytes_tensors(server: RuntimeServer) -> None:
    metadata = server.get("/v2/models/strings").json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "BYTES", "shape": [-1, 2]}]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "shout": "BYTES",
        "joined": "BYTES",
        "is_hello": "BOOL",
    }


@pytest.mark.parametrize("nested", [True, False])
def test_json_strings_in_and_out_match_onnxruntime(
    server: RuntimeServer, models: dict[str, Path], nested: bool
) -> None:
    data = TEXT if nested else [s for row in TEXT for s in row]
    answer = server.post("/v2/models/strings/infer", json=_request(data, [3, 2]))
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    expected = _expected(models, TEXT)
    assert outputs["shout"]["datatype"] == "BYTES"
    assert outputs["shout"]["shape"] == [3, 2]
    assert outputs["shout"]["data"] == expected["shout"].ravel().tolist()
    assert (
        outputs["joined"]["data"]
        == expected["joined"].tolist()
        == ["hellowörld", "héllohello", "日本"]
    )
    assert outputs["is_hello"]["data"] == expected["is_hello"].ravel().tolist()


def test_tritonclient_sends_and_reads_bytes_in_binary(
    server: RuntimeServer, models: dict[str, Path]
) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        x = triton.InferInput("x", [3, 2], "BYTES")
        x.set_data_from_numpy(
            np.array([[s.encode() for s in row] for row in TEXT], dtype=object), binary_data=True
        )
        wanted = [
            triton.InferRequestedOutput(n, binary_data=True)
            for n in ("shout", "joined", "is_hello")
        ]
        result = client.infer("strings", [x], outputs=wanted)
        expected = _expected(models, TEXT)
        assert [v.decode() for v in result.as_numpy("shout").ravel()] == expected[
            "shout"
        ].ravel().tolist()
        assert [v.decode() for v in result.as_numpy("joined")] == expected["joined"].tolist()
        assert result.as_numpy("is_hello").tolist() == expected["is_hello"].tolist()
    finally:
        client.close()


def _binary_request(payload: bytes, shape: list[int]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


def _elements(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


@pytest.mark.parametrize(
    ("payload", "shape", "message"),
    [
        (_elements(b"a", b"b", b"c"), [2, 2], "3 elements given but shape [2, 2] needs 4"),
        (_elements(b"a", b"b", b"c", b"d", b"e"), [2, 2], "more than the 4 elements"),
        (_elements(b"a", b"\xff\xfe", b"c", b"d"), [2, 2], "element 1 is not UTF-8"),
        (
            _elements(b"a", b"b", b"c") + struct.pack("<I", 99) + b"d",
            [2, 2],
            "element 3 declares 99 bytes",
        ),
        (
            _elements(b"a", b"b", b"c") + b"\x01\x00",
            [2, 2],
            "element 3 has a cut-off length prefix",
        ),
    ],
)
def test_bad_binary_bytes_are_400s_naming_the_element(
    server: RuntimeServer, payload: bytes, shape: list[int], message: str
) -> None:
    body, headers = _binary_request(payload, shape)
    answer = server.post("/v2/models/strings/infer", data=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert "input 'x'" in answer.json()["error"]


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        (
            ["a", 1, "b", "c"],
            [2, 2],
            "element 1 (row-major) is 1, an integer; expected a string (BYTES)",
        ),
        (["a", None, "b", "c"], [2, 2], "element 1 (row-major) is null"),
        ([["a", "b", "c"], ["d"]], [2, 2], "nested exactly as shape [2, 2]"),
        (["a", "b", "c"], [2, 2], "3 elements given but shape [2, 2] needs 4"),
        ("abcd", [2, 2], "must be a list of strings"),
    ],
)
def test_bad_json_strings_are_400s(
    server: RuntimeServer, data: Any, shape: list[int], message: str
) -> None:
    answer = server.post("/v2/models/strings/infer", json=_request(data, shape))
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_strings_are_batched_with_strings(server: RuntimeServer) -> None:
    """Several string requests at once are answered each with its own rows."""
    rows = [[[f"r{i}", f"c{i}"]] for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda r: server.post("/v2/models/strings/infer", json=_request(r, [1, 2])), rows
            )
        )
    for row, answer in zip(rows, answers, strict=True):
        joined = {o["name"]: o for o in answer.json()["outputs"]}["joined"]["data"]
        assert joined == ["".join(row[0])]
