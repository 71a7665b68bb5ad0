"""The batcher on a real onnxruntime session: merge, split, isolation of a bad request,
and the bounded queue (503 with Retry-After, counted)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.batching import Batcher
from modelplane_runtime.errors import Overloaded
from modelplane_runtime.metrics import RuntimeMetrics
from modelplane_runtime.model import OnnxModel
from modelplane_testkit import onnx_models


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    path = onnx_models.gather_table(tmp_path_factory.mktemp("gather") / "gather.onnx")
    return OnnxModel.load(RuntimeSettings(model_name="gather", model_path=path))


def _rows(*indexes: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"i": np.array([[i] for i in indexes], dtype=np.int64)}


def _batch_sizes(metrics: RuntimeMetrics) -> tuple[float, float]:
    """(runs, rows) observed so far."""
    histogram = metrics.batch_size
    samples = {s.name: s.value for m in histogram.collect() for s in m.samples}
    return samples.get("modelplane_batch_size_count", 0.0), samples.get(
        "modelplane_batch_size_sum", 0.0
    )


async def _with_batcher(batcher: Batcher, *requests: dict[str, Any]) -> list[Any]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.infer(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_are_merged_and_split_back(model: OnnxModel) -> None:
    metrics = RuntimeMetrics("merge")
    batcher = Batcher(model, max_batch_size=8, max_latency_ms=0, metrics=metrics, max_queued=64)
    results = asyncio.run(_with_batcher(batcher, _rows(0, 1), _rows(2), _rows(3, 3, 0)))
    assert [r[0].ravel().tolist() for r in results] == [[10, 20], [30], [40, 40, 10]]
    runs, rows = _batch_sizes(metrics)
    assert rows == 6
    assert runs == 1, "three concurrent requests, one onnxruntime run"


def test_a_bad_request_does_not_fail_the_others_in_its_batch(model: OnnxModel) -> None:
    metrics = RuntimeMetrics("isolate")
    batcher = Batcher(model, max_batch_size=8, max_latency_ms=0, metrics=metrics, max_queued=64)
    good, bad, other = asyncio.run(_with_batcher(batcher, _rows(1), _rows(7), _rows(2, 3)))
    assert good[0].ravel().tolist() == [20]
    assert isinstance(bad, Exception)
    assert other[0].ravel().tolist() == [30, 40]


def test_requests_are_never_merged_past_the_batch_size(model: OnnxModel) -> None:
    metrics = RuntimeMetrics("limit")
    batcher = Batcher(model, max_batch_size=2, max_latency_ms=0, metrics=metrics, max_queued=64)
    results = asyncio.run(_with_batcher(batcher, *(_rows(i % 4) for i in range(5))))
    assert [r[0].item() for r in results] == [10, 20, 30, 40, 10]
    runs, rows = _batch_sizes(metrics)
    assert (runs, rows) == (3, 5)


def test_a_full_queue_refuses_at_once_with_retry_after(model: OnnxModel) -> None:
    metrics = RuntimeMetrics("full")
    batcher = Batcher(model, max_batch_size=2, max_latency_ms=0, metrics=metrics, max_queued=3)

    async def scenario() -> tuple[Overloaded, list[Any]]:
        # The dispatcher is not running yet: the queue fills exactly as under load.
        waiting = [asyncio.ensure_future(batcher.infer(_rows(1))) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.infer(_rows(2))
        batcher.start()
        answered = await asyncio.gather(*waiting)
        await batcher.stop()
        return refused.value, answered

    refused, answered = asyncio.run(scenario())
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "maxQueuedRequests" in refused.message
    assert [a[0].item() for a in answered] == [20, 20, 20], "the queued ones are still served"
    assert metrics.queue_full._value.get() == 1


def test_the_queue_limit_defaults_to_a_few_batches() -> None:
    assert RuntimeSettings(max_batch_size=16).queue_limit == 8 * 16
    assert RuntimeSettings(max_batch_size=1).queue_limit == 64, "batching off: still a queue"
    assert RuntimeSettings(max_batch_size=16, max_queued_requests=5).queue_limit == 5


def test_clients_that_wait_for_their_answers_fill_whole_batches(tmp_path: Any) -> None:
    """Eight closed-loop clients, each sending its next request a moment after its answer
    (client i after i x 0.5 ms: writing the answer, the network, decoding the next one).
    Running whatever is queued when the lane frees splits them: the first client back runs
    alone while the other seven queue. Waiting (at most a typical run) for as many requests
    as were recently in the engine keeps all eight together. Catches that wait removed."""
    path = onnx_models.slow_loop(tmp_path / "slow.onnx", width=64, iterations=6000)
    model = OnnxModel.load(RuntimeSettings(model_name="slow", model_path=path, intra_op_threads=1))
    metrics = RuntimeMetrics("closed-loop")
    batcher = Batcher(model, max_batch_size=64, max_latency_ms=1000, metrics=metrics, max_queued=64)
    clients, rounds = 8, 12
    row = {"x": np.ones((1, 64), dtype=np.float32)}

    async def client(index: int) -> None:
        for _ in range(rounds):
            await batcher.infer(row)
            await asyncio.sleep(index * 0.0005)

    async def scenario() -> None:
        batcher.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), 120)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    runs, rows = _batch_sizes(metrics)
    assert rows == clients * rounds
    # The first rounds learn the peak; after that, one run per round.
    assert runs <= rounds + 4, f"{runs:.0f} runs for {rounds} rounds of {clients} clients"
