"""`fetch` over http(s) never hangs: stalls, resets and 5xx are retried, resumed with Range
where the server allows it, and a fetch that cannot finish says so in one line and in
its termination message, which the operator's status reads (FetchStalled, Retrying).

Every server here is a real HTTP server on 127.0.0.1 scripted per request; the fetch is
the real command as a subprocess."""

from __future__ import annotations

import hashlib
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from modelplane_api import facts, names
from modelplane_operator.status import judge_deployment
from modelplane_testkit.runtime_server import run_runtime_cli

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ETAG = '"model-v1"'
# Long enough that a busy machine never trips it by accident, short enough for a test.
STALL = "2"


@dataclass
class Script:
    """What the server does for each request in turn (then "serve" for ever), and what it
    was asked."""

    steps: list[str] = field(default_factory=list)
    ranges: bool = True
    asked: list[dict[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(http.server.BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: PLR0911 - one early return per scripted step
        script = self.script
        script.asked.append(
            {"range": self.headers.get("Range"), "if-range": self.headers.get("If-Range")}
        )
        step = script.steps.pop(0) if script.steps else "serve"
        if step == "503":
            self._status(503, {"Retry-After": "1"})
            return
        if step == "429":
            self._status(429, {"Retry-After": "1"})
            return
        if step == "404":
            self._status(404, {})
            return
        start = 0
        asked = self.headers.get("Range")
        if script.ranges and asked and self.headers.get("If-Range") == ETAG:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", ETAG)
        if script.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if step == "serve":
            self.wfile.write(body)
            return
        if step == "hang":  # the headers, then nothing
            script.release.wait(timeout=60)
            return
        if step == "trickle":  # a byte at a time, never a pause as long as a stall
            for byte in body:
                if script.release.wait(timeout=0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.wfile.write(body[: len(body) // 3])
        self.wfile.flush()
        if step == "stall":  # the headers and a third of the body, then nothing
            script.release.wait(timeout=60)
        elif step == "reset":  # a third of the body, then a TCP reset
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.wfile.close()
            self.rfile.close()
            self.connection.close()

    def _status(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Scripted", (_Handler,), {"script": script})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.onnx", script
    script.release.set()
    httpd.shutdown()
    thread.join(timeout=10)
    httpd.server_close()


def _fetch(uri: str, target: Path, *extra: str, message: Path | None = None) -> Any:
    env = {"MODELPLANE_TERMINATION_MESSAGE_PATH": str(message)} if message else {}
    return run_runtime_cli(
        "fetch",
        uri,
        str(target),
        "--sha256",
        DIGEST,
        "--stall-seconds",
        STALL,
        *extra,
        env=env,
        timeout=120,
    )


def test_a_stalled_download_is_resumed_where_it_stopped(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    uri, script = server
    script.steps = ["stall"]
    done = _fetch(uri, tmp_path / "model.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == PAYLOAD
    assert "Retrying" in done.stderr
    assert "stalled: no byte for 2 s" in done.stderr
    assert script.asked[0]["range"] is None
    third = len(PAYLOAD) // 3
    assert script.asked[1] == {"range": f"bytes={third}-", "if-range": ETAG}


def test_a_reset_connection_is_resumed_and_the_whole_file_verified(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    uri, script = server
    script.steps = ["reset", "reset"]
    done = _fetch(uri, tmp_path / "model.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == PAYLOAD
    assert len(script.asked) == 3
    assert "connection reset by the server" in done.stderr


def test_without_ranges_a_reset_download_starts_again(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    uri, script = server
    script.ranges = False
    script.steps = ["reset"]
    done = _fetch(uri, tmp_path / "model.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == PAYLOAD
    assert [a["range"] for a in script.asked] == [None, None]


@pytest.mark.parametrize("refusal", ["503", "429"])
def test_503_or_429_then_200_is_fetched(
    server: tuple[str, Script], tmp_path: Path, refusal: str
) -> None:
    uri, script = server
    script.steps = [refusal, refusal]
    done = _fetch(uri, tmp_path / "model.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == PAYLOAD
    assert len(script.asked) == 3
    assert f"HTTP {refusal}" in done.stderr


def test_a_fetch_that_keeps_stalling_gives_up_and_says_so(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    """Every attempt stalls: the fetch ends (it does not hang), in one line, writing
    nothing, and its termination message is what the operator's status shows."""
    uri, script = server
    script.steps = ["hang"] * 10
    message = tmp_path / "termination-log"
    message.write_text("")
    done = _fetch(uri, tmp_path / "model.onnx", "--attempts", "2", message=message)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot fetch")
    assert "stalled: no byte for 2 s" in last
    assert "gave up: 2 attempts in a row fetched nothing" in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["termination-log"]
    said = message.read_text()
    assert said.startswith(f"{facts.FETCH_STALLED}: cannot fetch '{uri}': stalled")

    # What the status makes of it: stalled while the kubelet waits to run it again...
    stalled = {"terminated": {"exitCode": 1, "message": said}}
    verdict = judge_deployment(
        _deployment(), [_pod({"waiting": {"reason": "CrashLoopBackOff"}}, stalled)]
    )
    assert (verdict.reason, verdict.ready, verdict.stalled) == (facts.FETCH_STALLED, False, False)
    assert "attempt 2, 0 bytes fetched" in verdict.message
    assert "stalled: no byte for 2 s" in verdict.message
    # ...and retrying, with the run and the last error, while it runs again.
    again = {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
    verdict = judge_deployment(_deployment(), [_pod(again, stalled, restarts=2)])
    assert verdict.reason == facts.FETCH_RETRYING
    assert "run 3 of the fetch, since 2025-01-01T00:00:00Z" in verdict.message
    assert "stalled: no byte for 2 s" in verdict.message


def test_a_trickle_is_bounded_by_the_budget(server: tuple[str, Script], tmp_path: Path) -> None:
    """A server that sends a byte now and then, never pausing as long as a stall, is
    bounded by the fetch's overall budget."""
    uri, script = server
    script.steps = ["trickle"] * 10
    done = run_runtime_cli(
        "fetch",
        uri,
        str(tmp_path / "model.onnx"),
        "--stall-seconds",
        "30",
        "--budget-seconds",
        "3",
        timeout=120,
    )
    assert done.returncode == 1
    assert "budget of 3 s is spent" in done.stderr


def test_a_refused_connection_and_a_404_are_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = run_runtime_cli(
        "fetch",
        f"http://127.0.0.1:{port}/model.onnx",
        str(tmp_path / "m.onnx"),
        "--attempts",
        "2",
        timeout=120,
    )
    assert refused.returncode == 1
    assert "connection refused" in refused.stderr
    assert "FileNotFoundError" not in refused.stderr
    assert refused.stderr.count("\n") == 2  # the one retry logged, then the error


def test_a_404_fails_at_once(server: tuple[str, Script], tmp_path: Path) -> None:
    uri, script = server
    script.steps = ["404"]
    done = _fetch(uri, tmp_path / "model.onnx")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot fetch '{uri}': HTTP 404 Not Found"
    assert len(script.asked) == 1


def _deployment() -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1},
    }


def _pod(state: dict[str, Any], last: dict[str, Any], restarts: int = 1) -> dict[str, Any]:
    fetch = {
        "name": names.FETCH_CONTAINER,
        "state": state,
        "lastState": last,
        "restartCount": restarts,
    }
    return {"status": {"initContainerStatuses": [fetch]}}
