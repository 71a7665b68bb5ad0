"""What a BYTES request may cost: its elements are capped and charged to the memory budget
from the declared shapes, before any element is decoded; binary elements are decoded
without a Python object each (and still exactly), off the event loop (the probes are
answered meanwhile); outputs of any size are answered."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests

from modelplane_runtime.protocol import MAX_STRING_ELEMENTS, STRING_ELEMENT_BYTES
from modelplane_testkit.runtime_server import PROBE_PATHS, RuntimeServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    # DEBUG: the runtime's lines around a large request's decode (see the probes' test)
    env = {"MODELPLANE_LOG_LEVEL": "DEBUG"}
    with RuntimeServer(["--model", str(models["strings"])], env=env, log_dir=logs) as running:
        yield running


def _binary_body(values: list[bytes], rows: int, **more: Any) -> tuple[bytes, dict[str, str]]:
    """A request of binary BYTES ``values`` in ``rows`` rows (``more``: the header's other
    fields), and its headers."""
    payload = b"".join(struct.pack("<I", len(v)) + v for v in values)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, len(values) // rows],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ],
            **more,
        }
    ).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


def _binary(server: RuntimeServer, values: list[bytes], rows: int) -> requests.Response:
    body, headers = _binary_body(values, rows)
    return server.post("/v2/models/strings/infer", data=body, headers=headers)


def _expected(models: dict[str, Path], x: np.ndarray[Any, Any]) -> dict[str, Any]:
    session = ort.InferenceSession(str(models["strings"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x}), strict=True))


def test_more_bytes_elements_than_the_cap_is_413(server: RuntimeServer) -> None:
    answer = _binary(server, [b""] * (MAX_STRING_ELEMENTS + 2), rows=MAX_STRING_ELEMENTS // 2 + 1)
    assert answer.status_code == 413, answer.text[:300]
    assert f"over the limit of {MAX_STRING_ELEMENTS}" in answer.json()["error"]
    assert server.get("/v2/health/ready").status_code == 200


def test_bytes_elements_are_charged_to_the_memory_budget(
    models: dict[str, Path], logs: Path
) -> None:
    env = {"MODELPLANE_MEMORY_LIMIT_BYTES": str(256 * MIB)}
    with RuntimeServer(["--model", str(models["strings"])], env=env, log_dir=logs) as server:
        budget = server.metric("modelplane_request_memory_budget_bytes", model="strings")
        # Empty strings: 4 bytes each on the wire (12 with the body's own charge), but
        # STRING_ELEMENT_BYTES each once decoded and run.
        count = min(MAX_STRING_ELEMENTS, int(budget) // STRING_ELEMENT_BYTES + 1024) // 2 * 2
        assert 0 < count * 4 * 3 < budget < count * STRING_ELEMENT_BYTES, (budget, count)
        answer = _binary(server, [b""] * count, rows=count // 2)
        assert answer.status_code == 413, answer.text[:300]
        assert "request memory budget" in answer.json()["error"]
        small = _binary(server, [b"a", b"b"], rows=1)
        assert small.status_code == 200, small.text


def test_binary_strings_of_every_shape_decode_exactly(
    server: RuntimeServer, models: dict[str, Path]
) -> None:
    cases = [
        ["hello", "wörld", "", "日本"],  # fixed width
        ["a\x00b", "nul inside", "c", "d"],  # NUL: not a C string, decoded as objects
        ["x" * 100_000, "y", "z", ""],  # uneven: decoded as objects
        ["trailing\x00", "é", "\x00", "ok"],
    ]
    for texts in cases:
        answer = _binary(server, [t.encode() for t in texts], rows=2)
        assert answer.status_code == 200, answer.text[:300]
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        expected = _expected(models, np.array(texts, dtype=object).reshape(2, 2))
        assert outputs["shout"] == expected["shout"].ravel().tolist()
        assert outputs["joined"] == expected["joined"].tolist()
    bad = _binary(server, [b"ok", b"\xc3", b"\xa9", b"fine"], rows=2)  # é cut in two
    assert bad.status_code == 400
    assert "element 1 is not UTF-8" in bad.json()["error"]


def test_bytes_outputs_over_one_encoding_chunk_are_answered_as_json(
    server: RuntimeServer, models: dict[str, Path]
) -> None:
    rows = 40_000  # 80,000 elements in 'shout': more than one 65,536-element chunk
    texts = [f"s{i}" for i in range(rows * 2)]
    body = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "BYTES", "data": texts}]}
    answer = server.post("/v2/models/strings/infer", json=body)
    assert answer.status_code == 200, answer.text[:300]
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    expected = _expected(models, np.array(texts, dtype=object).reshape(rows, 2))
    assert outputs["shout"] == expected["shout"].ravel().tolist()
    assert outputs["joined"] == expected["joined"].tolist()


# Requests sent until both probes were seen answered during a decode: one usually does, the
# others are for a machine so busy that no probe got in during the first decodes.
DECODES = 3


def test_health_probes_are_answered_while_a_large_bytes_request_is_decoded(
    server: RuntimeServer,
) -> None:
    """Point 5's "probes answered meanwhile": a request of MAX_STRING_ELEMENTS binary
    strings is decoded on the decoder thread, not on the event loop. Proved by order: the
    runtime logs a line before the decode and one after it, with no await between them but
    the decode's own; a probe sent once the first is written and answered before the second
    can only have been answered by a loop the decode did not hold. Decoded on the loop,
    none ever is, whatever the machine's load."""
    values = [b"%06d" % i for i in range(MAX_STRING_ELEMENTS)]  # fixed width, at the cap
    wanted = [{"name": "is_hello", "parameters": {"binary_data": True}}]  # a small answer
    body, headers = _binary_body(values, MAX_STRING_ELEMENTS // 2, outputs=wanted)
    url = server.url + "/v2/models/strings/infer"
    answered = dict.fromkeys(PROBE_PATHS, 0)
    for _ in range(DECODES):
        log_from = len(server.log())
        with ThreadPoolExecutor(max_workers=1) as sender:
            sent = sender.submit(requests.post, url, data=body, headers=headers, timeout=60)
            counts = server.probes_answered_between(
                "strings: decoding a large request", "strings: decoded in", log_from=log_from
            )
            reply = sent.result(timeout=60)
        assert reply.status_code == 200, reply.text[:300]
        for path, count in counts.items():
            answered[path] += count
        if all(answered.values()):
            break
    assert all(answered.values()), (answered, server.log()[-3000:])
