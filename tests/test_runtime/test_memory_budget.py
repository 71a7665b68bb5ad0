"""Request bodies are admitted against a memory budget derived from the memory limit:
503 with Retry-After while others hold it (the body read and dropped, so the client sees
the answer), 413 for a body that could never fit, counted; and memory comes back after."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_runtime.memory import COST_PER_BODY_BYTE
from modelplane_testkit import raw_http
from modelplane_testkit.runtime_server import RuntimeServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    env = {"MODELPLANE_MEMORY_LIMIT_BYTES": str(320 * MIB), "MODELPLANE_BODY_IDLE_SECONDS": "20"}
    with RuntimeServer(["--model", str(models["relu"])], env=env, log_dir=logs) as running:
        yield running


def _body(size: int) -> bytes:
    """A valid relu request of at least ``size`` bytes."""
    row = [0.25, -0.5, 0.75, -1.0]
    rows = size // len(json.dumps(row)) + 1
    data = json.dumps([row] * rows).encode()
    head = json.dumps({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32"}]})
    body = head[:-3].encode() + b', "data": ' + data + b"}]}"
    assert len(body) >= size
    return body


def _budget(server: RuntimeServer) -> int:
    budget = server.metric("modelplane_request_memory_budget_bytes", model="relu")
    assert budget > 16 * MIB, budget  # 320 MiB less the runtime's own start-up size
    return int(budget)


def test_a_body_that_does_not_fit_beside_another_waits_with_503(server: RuntimeServer) -> None:
    size = _budget(server) // (2 * COST_PER_BODY_BYTE) + MIB  # one fits, two do not
    first, second = _body(size), _body(size)
    refused_before = server.metric("modelplane_memory_refused_total", model="relu")
    with raw_http.connect(server.port) as holding:
        holding.sendall(raw_http.infer_request("relu", first[:1000], content_length=len(first)))
        time.sleep(0.3)  # its memory is reserved from its Content-Length on
        answer = raw_http.exchange(server.port, raw_http.infer_request("relu", second))
        assert answer.status == 503, answer
        assert answer.headers["retry-after"] == "1"
        assert "not enough memory" in answer.json()["error"]
        holding.sendall(first[1000:])
        assert raw_http.answer(holding).status == 200
    after = raw_http.exchange(server.port, raw_http.infer_request("relu", second))
    assert after.status == 200, after  # the first one's memory was given back
    assert server.metric("modelplane_memory_refused_total", model="relu") == refused_before + 1


def test_a_body_that_could_never_fit_is_413(server: RuntimeServer) -> None:
    size = _budget(server) // COST_PER_BODY_BYTE + MIB
    request = raw_http.infer_request("relu", b"{", content_length=size)
    answer = raw_http.exchange(server.port, request)
    assert answer.status == 413, answer
    assert "memory budget" in answer.json()["error"]
