"""What hostile and oversized requests cost the runtime: memory and other clients' latency.

    python bench/runtime_limits.py [--max-request-mib 64] [--memory-limit-mib 2048]

One real runtime (``modelplane serve``) on 127.0.0.1, serving a small MLP
(float32 [batch, 64] -> 10, so the answer is small next to the request). Measured:

- peak RSS growth for one maximum-size JSON request, and for one maximum-size
  binary request (the kernel's high-water mark, reset before each), as a multiple
  of the body's size, and RSS once it is answered;
- the same with several maximum-size requests at once, against the memory limit
  the runtime is given (what a pod's limit would be): peak RSS and how many were
  refused with 503;
- health-probe latency (GET /v2/health/ready every 20 ms) during all of that;
- the median latency of small requests with and without a stalled request body
  (Content-Length promised, a few bytes sent, then silence) on another connection.

Prints a table and writes bench/results/runtime_limits.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from modelplane_testkit.runtime_server import free_port  # noqa: E402
from runtime_serving import make_mlp  # noqa: E402

RESULTS = BENCH / "results"
WIDTH = 64
MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


@contextlib.contextmanager
def runtime(model: Path, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    port = free_port()
    log = open(tempfile.mktemp(prefix="runtime-limits-", suffix=".log"), "wb")  # noqa: SIM115
    command = [sys.executable, "-m", "modelplane_runtime", "serve", "--model", str(model)]
    process = subprocess.Popen(
        [*command, "--name", "mlp", "--port", str(port)],
        env={**os.environ, "MODELPLANE_INTRA_OP_THREADS": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _get(port, "/v2/health/ready")[0] == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"runtime not ready; log in {log.name}")
        yield process.pid, port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _post(port: int, body: bytes, headers: dict[str, str] | None = None) -> int:
    """The answer's status; 0 when the connection broke before one arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/v2/models/mlp/infer", body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


class Prober:
    """GET /v2/health/ready every 20 ms from its own process (so that this process's own
    work on large bodies does not delay it); keeps every latency."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._stop = multiprocessing.Event()
        self._results: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
        self._process = multiprocessing.Process(
            target=_probe, args=(port, self._stop, self._results), daemon=True
        )

    def __enter__(self) -> Prober:
        self._process.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies = self._results.get(timeout=60)
        self._process.join(timeout=30)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies, default=0.0) * 1000

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies) or [0.0]
        return {
            "probes": len(self.latencies),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
            "worst_ms": round(ordered[-1] * 1000, 1),
            "over_100_ms": sum(1 for v in ordered if v > 0.1),
        }


def _probe(port: int, stop: Any, results: Any) -> None:
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        with contextlib.suppress(OSError):
            _get(port, "/v2/health/ready")
        latencies.append(time.perf_counter() - started)
        stop.wait(0.02)
    results.put(latencies)


def json_body(size: int) -> bytes:
    """The largest JSON request of random float32 rows (as numpy's shortest repr) that fits."""
    row = np.random.default_rng(0).standard_normal(WIDTH).astype(np.float32)
    row_text = json.dumps([float(v) for v in row.tolist()]).encode()
    rows = (size - 200) // (len(row_text) + 1)
    head = f'{{"inputs": [{{"name": "input", "shape": [{rows}, {WIDTH}], "datatype": "FP32", '
    body = head.encode() + b'"data": [' + b",".join([row_text] * rows) + b"]}]}"
    assert len(body) <= size
    return body


def binary_body(size: int) -> tuple[bytes, dict[str, str]]:
    rows = (size - 400) // (WIDTH * 4)
    data = np.random.default_rng(0).standard_normal((rows, WIDTH)).astype(np.float32).tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [rows, WIDTH],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def one_request(pid: int, port: int, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    time.sleep(1)
    baseline = rss_mib(pid)
    reset_peak(pid)
    with Prober(port) as prober:
        status = _post(port, body, headers)
        time.sleep(0.5)
    peak = peak_mib(pid)
    time.sleep(1)
    return {
        "status": status,
        "body_mib": round(len(body) / MIB, 1),
        "baseline_rss_mib": round(baseline, 1),
        "peak_growth_mib": round(peak - baseline, 1),
        "peak_growth_per_body": round((peak - baseline) / (len(body) / MIB), 2),
        "rss_after_mib": round(rss_mib(pid), 1),
        "worst_probe_ms": round(prober.worst_ms, 1),
        "probes": prober.summary(),
    }


def concurrent_requests(pid: int, port: int, body: bytes, count: int) -> dict[str, Any]:
    time.sleep(1)
    baseline = rss_mib(pid)
    reset_peak(pid)
    with Prober(port) as prober, ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(lambda _: _post(port, body), range(count)))
    peak = peak_mib(pid)
    return {
        "requests": count,
        "answered_200": statuses.count(200),
        "refused_503": statuses.count(503),
        "other": [s for s in statuses if s not in (200, 503)],
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak, 1),
        "rss_after_mib": round(rss_mib(pid), 1),
        "worst_probe_ms": round(prober.worst_ms, 1),
        "probes": prober.summary(),
    }


def stalled_body_effect(port: int, requests: int = 300) -> dict[str, Any]:
    small = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.5] * WIDTH}
            ]
        }
    ).encode()

    def median_ms() -> float:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            connection.request("POST", "/v2/models/mlp/infer", body=small)
            connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
        connection.close()
        return statistics.median(latencies) * 1000

    median_ms()  # warm
    alone = median_ms()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
        )
        time.sleep(0.05)
        with_stalled = median_ms()
    return {
        "median_ms_alone": round(alone, 3),
        "median_ms_with_stalled_body": round(with_stalled, 3),
        "difference_ms": round(with_stalled - alone, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-request-mib", type=int, default=64, help="runtime.maxRequestBytes")
    parser.add_argument("--memory-limit-mib", type=int, default=2048, help="the pod's limit")
    parser.add_argument("--concurrent", type=int, default=12, help="maximum-size requests at once")
    parser.add_argument("--output", type=Path, default=RESULTS / "runtime_limits.json")
    args = parser.parse_args()
    started = time.monotonic()
    limit = args.max_request_mib * MIB
    env = {
        "MODELPLANE_MAX_REQUEST_BYTES": str(limit),
        "MODELPLANE_MEMORY_LIMIT_BYTES": str(args.memory_limit_mib * MIB),
        "MODELPLANE_BODY_IDLE_SECONDS": "30",
    }
    with tempfile.TemporaryDirectory() as work:
        model = make_mlp(Path(work) / "mlp.onnx", [WIDTH, 10])
        big_json = json_body(limit)
        big_binary, binary_headers = binary_body(limit)
        with runtime(model, env) as (pid, port):
            report: dict[str, Any] = {
                "settings": {**env, "model": f"float32 [batch, {WIDTH}] -> 10"},
                "json": one_request(pid, port, big_json, {}),
                "binary": one_request(pid, port, big_binary, binary_headers),
                "concurrent_json": concurrent_requests(pid, port, big_json, args.concurrent),
                "stalled_body": stalled_body_effect(port),
            }
    report["took_seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten to {args.output}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    limit_mib = int(report["settings"]["MODELPLANE_MEMORY_LIMIT_BYTES"]) // MIB
    rows: list[tuple[str, Any]] = []
    for kind in ("json", "binary"):
        r = report[kind]
        name = f"one {r['body_mib']} MiB {kind} request"
        rows += [
            (f"{name}: status", r["status"]),
            (
                f"{name}: peak RSS growth MiB (x body)",
                f"{r['peak_growth_mib']} ({r['peak_growth_per_body']}x)",
            ),
            (
                f"{name}: RSS before -> after MiB",
                f"{r['baseline_rss_mib']} -> {r['rss_after_mib']}",
            ),
            (f"{name}: health probe p99 / worst ms", _probes(r["probes"])),
        ]
    c = report["concurrent_json"]
    name = f"{c['requests']} such JSON requests at once"
    rows += [
        (f"{name}: answered / refused 503", f"{c['answered_200']} / {c['refused_503']}"),
        (f"{name}: peak RSS MiB (limit {limit_mib})", c["peak_rss_mib"]),
        (f"{name}: RSS after MiB", c["rss_after_mib"]),
        (f"{name}: health probe p99 / worst ms", _probes(c["probes"])),
    ]
    s = report["stalled_body"]
    rows.append(
        (
            "small-request median ms alone / beside a stalled body",
            f"{s['median_ms_alone']} / {s['median_ms_with_stalled_body']}",
        )
    )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:{width}}  {value}")


def _probes(summary: dict[str, Any]) -> str:
    return f"{summary['p99_ms']} / {summary['worst_ms']} ({summary['over_100_ms']} over 100 ms)"


if __name__ == "__main__":
    sys.exit(main())
