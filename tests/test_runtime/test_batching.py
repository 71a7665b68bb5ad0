"""Adaptive batching under concurrent load, through the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from modelplane_testkit import raw_http
from modelplane_testkit.runtime_server import RuntimeServer

REQUESTS = 160


@pytest.fixture(scope="module")
def chain_server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    env = {
        "MODELPLANE_MAX_BATCH_SIZE": "32",
        "MODELPLANE_MAX_LATENCY_MS": "5",
        "MODELPLANE_INTRA_OP_THREADS": "1",
    }
    with RuntimeServer(["--model", str(models["chain"])], env=env, log_dir=logs) as server:
        yield server


def _post_all(server: RuntimeServer, model: str, bodies: list[dict[str, Any]]) -> list[Any]:
    """Every request sent at once, each on its own connection, before any answer is read:
    a burst the server sees whole however busy this machine is (client threads competing
    for this process's GIL would spread it out, and the batching with it)."""
    connections = [raw_http.connect(server.port, timeout=60) for _ in bodies]
    try:
        for connection, body in zip(connections, bodies, strict=True):
            connection.sendall(raw_http.infer_request(model, json.dumps(body).encode()))
        return [raw_http.answer(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()


def test_concurrent_requests_are_batched_and_answered_individually(
    chain_server: RuntimeServer, models: dict[str, Path]
) -> None:
    rng = np.random.default_rng(7)
    rows = [int(rng.integers(1, 4)) for _ in range(REQUESTS)]
    inputs = [rng.standard_normal((n, 256)).astype(np.float32) for n in rows]
    bodies = [
        {
            "id": str(i),
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
        }
        for i, x in enumerate(inputs)
    ]
    runs_before = chain_server.metric("modelplane_batch_size_count", model="chain")
    rows_before = chain_server.metric("modelplane_batch_size_sum", model="chain")

    responses = _post_all(chain_server, "chain", bodies)

    session = ort.InferenceSession(str(models["chain"]))
    for i, (x, response) in enumerate(zip(inputs, responses, strict=True)):
        assert response.status == 200, response
        body = response.json()
        assert body["id"] == str(i)
        (want,) = session.run(None, {"x": x})
        got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    runs = chain_server.metric("modelplane_batch_size_count", model="chain") - runs_before
    batched_rows = chain_server.metric("modelplane_batch_size_sum", model="chain") - rows_before
    assert batched_rows == sum(rows)
    mean_rows_per_run = batched_rows / runs
    mean_rows_per_request = sum(rows) / REQUESTS
    # Under load, runs carry several requests: fewer onnxruntime runs than requests.
    assert runs < REQUESTS / 2, (runs, mean_rows_per_run)
    assert mean_rows_per_run > 2 * mean_rows_per_request


def test_unmergeable_shapes_are_still_served(models: dict[str, Path], logs: Path) -> None:
    rng = np.random.default_rng(3)
    widths = [int(rng.integers(1, 6)) for _ in range(60)]
    inputs = [rng.standard_normal((2, w)).astype(np.float32) for w in widths]
    bodies = [
        {"inputs": [{"name": "x", "shape": [2, w], "datatype": "FP32", "data": x.ravel().tolist()}]}
        for w, x in zip(widths, inputs, strict=True)
    ]
    with RuntimeServer(["--model", str(models["ragged"])], log_dir=logs) as server:
        responses = _post_all(server, "ragged", bodies)
    for x, response in zip(inputs, responses, strict=True):
        assert response.status == 200, response
        got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(x.shape), x * x, rtol=1e-6)


def test_a_fixed_batch_model_is_never_merged(models: dict[str, Path], logs: Path) -> None:
    inputs = [np.full((2, 3), i, dtype=np.float32) for i in range(40)]
    bodies = [
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
        for x in inputs
    ]
    with RuntimeServer(["--model", str(models["fixed"])], log_dir=logs) as server:
        responses = _post_all(server, "fixed", bodies)
        assert server.get("/v2/models/fixed").json()["parameters"]["batchable"] is False
        assert server.metric("modelplane_batch_size_sum", model="fixed") == 2 * len(inputs)
        assert server.metric("modelplane_batch_size_count", model="fixed") == len(inputs)
    for x, response in zip(inputs, responses, strict=True):
        assert response.status == 200, response
        assert response.json()["outputs"][0]["data"] == (x + 1).ravel().tolist()
