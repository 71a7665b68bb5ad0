"""Clients that never finish, send too much, stall or leave: each costs a bounded amount,
gets a JSON answer where one is owed, is counted as what it is, and slows nobody else.

Raw sockets throughout: a client library would not send any of this.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from modelplane_testkit import raw_http
from modelplane_testkit.runtime_server import RuntimeServer

GOOD = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, -2, 3, -4]}]}
).encode()
LIMITS = {
    "MODELPLANE_HEADER_TIMEOUT_SECONDS": "1",
    "MODELPLANE_BODY_IDLE_SECONDS": "1",
    "MODELPLANE_KEEP_ALIVE_SECONDS": "1",
    "MODELPLANE_MAX_CONNECTIONS": "40",
    "MODELPLANE_MAX_LATENCY_MS": "300",  # a batch that waited for a stalled body would show it
}


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(["--model", str(models["relu"])], env=LIMITS, log_dir=logs) as running:
        yield running


def _ok(server: RuntimeServer) -> None:
    answer = raw_http.exchange(server.port, raw_http.infer_request("relu", GOOD))
    assert answer.status == 200, answer


def _outcome(server: RuntimeServer, outcome: str) -> float:
    return server.metric("modelplane_inference_requests_total", model="relu", outcome=outcome)


def _settled_outcome(server: RuntimeServer, outcome: str, expected: float) -> float:
    """The outcome's count once it reaches ``expected`` (the server counts after the client
    has gone), or after 10 s; then checked exactly by the caller."""
    deadline = time.monotonic() + 10
    while (count := _outcome(server, outcome)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@contextlib.contextmanager
def _open_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    sockets = [raw_http.connect(port, timeout=10) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


# --- slow and silent connections ------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    server: RuntimeServer,
) -> None:
    with raw_http.connect(server.port, timeout=10) as silent:
        started = time.monotonic()
        assert raw_http.closed_by_peer(silent)
        assert time.monotonic() - started < 8  # 1 s configured; without a deadline: never
    _ok(server)


def test_headers_dribbled_a_byte_at_a_time_get_408(server: RuntimeServer) -> None:
    request = raw_http.infer_request("relu", GOOD)
    with raw_http.connect(server.port, timeout=10) as slow:
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in request[:60]:
                slow.send(bytes([byte]))
                time.sleep(0.05)
        answer = raw_http.answer(slow)
    assert answer.status == 408, answer
    assert "MODELPLANE_HEADER_TIMEOUT_SECONDS" in answer.json()["error"]
    assert time.monotonic() - started < 8


def test_idle_connections_are_bounded_and_normal_clients_still_get_answers(
    server: RuntimeServer,
) -> None:
    with _open_connections(server.port, 30) as idle:
        _ok(server)  # below the limit: served while 30 connections idle
        with _open_connections(server.port, 15):
            turned_away = raw_http.exchange(server.port, raw_http.infer_request("relu", GOOD))
        assert turned_away.status == 503, turned_away
        assert turned_away.headers["retry-after"] == "1"
        assert "MODELPLANE_MAX_CONNECTIONS" in turned_away.json()["error"]
        assert all(raw_http.closed_by_peer(sock) for sock in idle)  # the header timeout
    _ok(server)
    assert server.metric("modelplane_connections_refused_total", status="503") >= 1


def test_an_idle_keep_alive_connection_is_closed(server: RuntimeServer) -> None:
    with raw_http.connect(server.port, timeout=10) as sock:
        sock.sendall(raw_http.infer_request("relu", GOOD))
        assert raw_http.answer(sock).status == 200
        started = time.monotonic()
        assert raw_http.closed_by_peer(sock)
        assert time.monotonic() - started < 8


# --- oversized headers ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["request-line", "one-header", "many-headers"])
def test_oversized_request_lines_and_headers_get_431(server: RuntimeServer, where: str) -> None:
    big = "a" * 40_000
    if where == "request-line":
        request = f"GET /v2/models/{big} HTTP/1.1\r\nHost: x\r\n\r\n"
    elif where == "one-header":
        request = f"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    else:
        request = "GET /v2 HTTP/1.1\r\n" + "X-A: 1234567890\r\n" * 2000 + "\r\n"
    answer = raw_http.exchange(server.port, request.encode())
    assert answer.status == 431, answer
    assert "MODELPLANE_MAX_HEADER_BYTES" in answer.json()["error"]
    _ok(server)


def test_a_huge_header_is_cut_off_long_before_it_ends(server: RuntimeServer) -> None:
    """10 MB of one header: the server answers and closes after the first few kilobytes,
    so the client cannot even finish sending it (the parser never sees it)."""
    with raw_http.connect(server.port, timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(10 * 1024):
                sent += sock.send(b"b" * 1024)
        assert sent < 10 * 1024 * 1024
    _ok(server)


def test_a_normal_sized_header_block_is_served(server: RuntimeServer) -> None:
    headers = "".join(f"X-Trace-{i}: {'v' * 100}\r\n" for i in range(100))  # ~12 KiB
    answer = raw_http.exchange(
        server.port, raw_http.infer_request("relu", GOOD, extra_headers=headers)
    )
    assert answer.status == 200, answer


# --- bodies that stall, stop or break -------------------------------------------------------


def test_a_stalled_body_gets_408_and_delays_no_batch(server: RuntimeServer) -> None:
    before = server.metric("modelplane_queue_seconds_sum", model="relu")
    with raw_http.connect(server.port, timeout=10) as stalled:
        stalled.sendall(raw_http.infer_request("relu", GOOD[:10], content_length=len(GOOD)))
        time.sleep(0.5)  # past the batching window: the body is stalled, not arriving
        for _ in range(5):  # each would wait the 300 ms batching window for it: 1.5 s
            _ok(server)
        waited = server.metric("modelplane_queue_seconds_sum", model="relu") - before
        assert waited < 0.5, waited
        answer = raw_http.answer(stalled)
    assert answer.status == 408, answer
    assert "MODELPLANE_BODY_IDLE_SECONDS" in answer.json()["error"]
    assert answer.headers.get("connection") == "close"
    assert _outcome(server, "408") >= 1


def test_a_client_that_leaves_mid_body_is_counted_as_such_without_a_traceback(
    server: RuntimeServer,
) -> None:
    errors_before = _outcome(server, "500")
    left_before = _outcome(server, "client_closed")
    for _ in range(3):
        with raw_http.connect(server.port) as leaving:
            leaving.sendall(raw_http.infer_request("relu", GOOD[:10], content_length=len(GOOD)))
            time.sleep(0.05)
    assert _settled_outcome(server, "client_closed", left_before + 3) == left_before + 3
    assert _outcome(server, "500") == errors_before
    assert "Traceback" not in server.log()


def test_a_malformed_chunked_body_is_a_400_not_a_server_error(server: RuntimeServer) -> None:
    errors_before = _outcome(server, "500")
    bad_before = _outcome(server, "400")
    request = (
        b"POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"inp\r\nzz-not-a-size\r\n'
    )
    answer = raw_http.exchange(server.port, request)
    assert answer.status == 400, answer
    assert "malformed" in answer.json()["error"]
    assert _settled_outcome(server, "400", bad_before + 1) == bad_before + 1
    assert _outcome(server, "500") == errors_before
    assert "Traceback" not in server.log()


def test_a_stalled_body_does_not_hold_shutdown(models: dict[str, Path], logs: Path) -> None:
    env = {
        **LIMITS,
        "MODELPLANE_BODY_IDLE_SECONDS": "2",
        "MODELPLANE_REQUEST_TIMEOUT_SECONDS": "30",
    }
    runtime = RuntimeServer(["--model", str(models["relu"])], env=env, log_dir=logs).wait_live()
    try:
        with raw_http.connect(runtime.port, timeout=20) as stalled:
            stalled.sendall(raw_http.infer_request("relu", GOOD[:10], content_length=len(GOOD)))
            time.sleep(0.2)
            started = time.monotonic()
            runtime.process.send_signal(signal.SIGTERM)
            answer = raw_http.answer(stalled)
            assert answer.status == 408, answer  # JSON, not uvicorn's plain-text 500
            assert runtime.process.wait(timeout=20) == 0
            assert time.monotonic() - started < 15  # the 30 s grace period was not used up
    finally:
        runtime.terminate()


# --- every answer is JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("GET /nowhere", 404),
        ("GET /v2/", 404),  # no slash redirect
        ("GET /v2/models/relu/", 404),
        ("DELETE /v2", 405),
        ("GET /v2/models/relu/infer", 405),
    ],
)
def test_the_servers_own_errors_are_json(
    server: RuntimeServer, request_line: str, status: int
) -> None:
    request = f"{request_line} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n"
    answer = raw_http.exchange(server.port, request.encode())
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert "error" in answer.json()
    assert b"evil.example" not in answer.body
    assert "location" not in answer.headers


def test_garbage_instead_of_http_is_a_json_400(server: RuntimeServer) -> None:
    answer = raw_http.exchange(server.port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.status == 400, answer
    assert "malformed" in answer.json()["error"]
    assert requests.get(server.url + "/v2/health/live", timeout=10).status_code == 200


def test_the_log_holds_no_uvicorn_noise(server: RuntimeServer) -> None:
    """After every attack above: uvicorn's start-up chatter and its per-request warnings
    stay out of the log (its name is "uvicorn.error"; only errors may carry it)."""
    raw_http.exchange(server.port, b"GARBAGE\r\n\r\n")
    log = server.log()
    assert "serving relu on http://127.0.0.1" in log
    assert " uvicorn.error: " not in log, log[-2000:]
