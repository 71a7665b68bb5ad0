"""/metrics costs the server a bounded amount: consumers that left the access file leave
it too, and it is rendered at most about once a second however often it is scraped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelplane_api import facts
from modelplane_api.access import key_digest, new_key
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.runtime_server import RuntimeServer

KEYS = {"stays": new_key(), "leaves": new_key()}
PICKUP_DEADLINE = facts.ACCESS_RELOAD_SECONDS + 9  # a reload, a render, a busy machine


def _consumer(name: str) -> dict[str, object]:
    return {"name": name, "models": ["relu"], "keys": [{"sha256": key_digest(KEYS[name])}]}


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PICKUP_DEADLINE
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> AccessDir:
    folder = AccessDir(tmp_path_factory.mktemp("access") / "mounted")
    folder.publish({"consumers": [_consumer("stays"), _consumer("leaves")]})
    return folder


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path, access: AccessDir) -> Iterator[RuntimeServer]:
    args = ["--model", str(models["relu"]), "--access", str(access.file)]
    with RuntimeServer(args, log_dir=logs) as running:
        yield running


def _infer(server: RuntimeServer, consumer: str) -> int:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    headers = {"Authorization": f"Bearer {KEYS[consumer]}"}
    return server.post("/v2/models/relu/infer", json=body, headers=headers).status_code


def test_a_consumer_that_left_the_access_file_leaves_the_metrics(
    server: RuntimeServer, access: AccessDir
) -> None:
    assert _infer(server, "stays") == 200
    assert _infer(server, "leaves") == 200
    assert _eventually(lambda: 'consumer="leaves"' in server.get("/metrics").text)
    access.publish({"consumers": [_consumer("stays")]})
    assert _eventually(lambda: 'consumer="leaves"' not in server.get("/metrics").text)
    assert 'consumer="stays"' in server.get("/metrics").text
    assert _infer(server, "leaves") == 401


def test_metrics_are_rendered_at_most_about_once_a_second(server: RuntimeServer) -> None:
    started = time.monotonic()
    before = server.metric("modelplane_metrics_renders_total")  # as of its render
    for _ in range(40):
        assert server.get("/metrics").status_code == 200
    time.sleep(1.1)  # the next scrape renders afresh, and counts every render so far
    after = server.metric("modelplane_metrics_renders_total")
    elapsed = time.monotonic() - started
    assert after >= 1
    # One render a second at most, plus the one that answered ``before``.
    assert after - before <= elapsed + 2, (after, before, elapsed)
