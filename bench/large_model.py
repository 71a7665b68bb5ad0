"""A model whose weights are over 2 GB, start to finish: fetch, cache, load, serve.

    python bench/large_model.py [--gib 2.2] [--keep DIR]

Builds a graph with its weights in one external file (an embedding table, float32, so
an ONNX protobuf could not hold it), publishes it as a directory with a SHA256SUMS
manifest on a local HTTP server (127.0.0.1), and measures with the real commands:

- ``modelplane fetch`` without a cache, into an empty cache (a miss), and with the
  cache warm (a hit): wall time and rate (bytes of model per second);
- ``modelplane serve`` on the fetched directory: time to live, load time and warm-up
  time (the runtime's log), time to ready, peak RSS (the kernel's high-water mark) and
  steady RSS after requests, each against the weights' size; one answer is checked
  against numpy.

Prints a table and writes bench/results/large_model.json. Needs about 5x the model's
size in free disk and 2x in memory.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO / "tests"))

from modelplane_runtime.fetch import file_sha256  # noqa: E402
from modelplane_testkit.runtime_server import free_port  # noqa: E402

WIDTH = 1024
WEIGHTS = "weights.bin"
CHUNK_ROWS = 16_384
GIB = 1 << 30


def build(folder: Path, gib: float) -> tuple[int, int]:
    """model.onnx + weights.bin (rows x WIDTH float32, row r filled with r % 997 / 997)
    and SHA256SUMS; returns (rows, weight bytes)."""
    rows = int(gib * GIB / (WIDTH * 4))
    folder.mkdir(parents=True)
    with (folder / WEIGHTS).open("wb") as out:
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            values = (np.arange(start, start + count, dtype=np.float32) % 997) / 997
            noise = np.random.default_rng(start).standard_normal((count, WIDTH)).astype(np.float32)
            # Distinct bytes everywhere (nothing compresses or dedupes), known row means.
            block = noise - noise.mean(axis=1, keepdims=True) + values[:, None]
            out.write(block.astype(np.float32).tobytes())
    size = (folder / WEIGHTS).stat().st_size
    table = TensorProto()
    table.name = "table"
    table.data_type = TensorProto.FLOAT
    table.dims.extend([rows, WIDTH])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS), ("offset", "0"), ("length", str(size))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
            helper.make_node("ReduceMean", ["rows"], ["mean"], axes=[1], keepdims=0),
        ],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    manifest = "".join(f"{file_sha256(folder / n)}  {n}\n" for n in ("model.onnx", WEIGHTS))
    (folder / "SHA256SUMS").write_text(manifest)
    onnx.checker.check_model(str(folder / "model.onnx"))
    return rows, size


def _serve_folder(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _fetch(url: str, digest: str, destination: Path, cache: Path | None) -> tuple[float, str]:
    command = [sys.executable, "-m", "modelplane_runtime", "fetch", url, str(destination)]
    command += ["--sha256", digest]
    if cache is not None:
        command += ["--cache", str(cache)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fetch failed: {done.stderr.strip()}")
    outcome = re.search(r"cache (\w+)\)", done.stdout)
    return seconds, outcome.group(1) if outcome else "none"


def _kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def _serve(model_dir: Path, rows: int, log_path: Path) -> dict[str, float]:
    port = free_port()
    command = [
        sys.executable, "-m", "modelplane_runtime", "serve", "--model", str(model_dir),
        "--name", "big", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MODELPLANE_LOG_LEVEL": "INFO", "MODELPLANE_WARMUP_ITERATIONS": "3"}
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            live = ready = None
            deadline = time.monotonic() + 1800
            while ready is None and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SystemExit(f"the runtime exited:\n{log_path.read_text()[-2000:]}")
                try:
                    if live is None and session.get(base + "/v2/health/live", timeout=2).ok:
                        live = time.perf_counter() - started
                    if session.get(base + "/v2/health/ready", timeout=2).ok:
                        ready = time.perf_counter() - started
                except requests.ConnectionError:
                    pass
                time.sleep(0.05)
            if ready is None:
                raise SystemExit("the runtime was not ready within 30 minutes")
            peak = _kib(process.pid, "VmHWM") * 1024
            ids = np.array([[0, 1, 997, rows - 1]], dtype=np.int64)
            body = {"inputs": [{"name": "ids", "shape": [1, 4], "datatype": "INT64",
                                "data": ids.ravel().tolist()}]}  # fmt: skip
            for _ in range(20):
                answer = session.post(base + "/v2/models/big/infer", json=body, timeout=60)
                answer.raise_for_status()
            got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
            expected = ((ids[0] % 997) / 997).astype(np.float32).mean()
            if abs(float(got.mean()) - float(expected)) > 1e-3:
                raise SystemExit(f"wrong answer: mean {got.mean()} != {expected}")
            time.sleep(2)
            steady = _kib(process.pid, "VmRSS") * 1024
        finally:
            process.terminate()
            process.wait(timeout=60)
    text = log_path.read_text()
    timings = re.search(r"ready in ([\d.]+)s \(load ([\d.]+)s, warm-up ([\d.]+)s\)", text)
    load, warmup = (float(timings.group(2)), float(timings.group(3))) if timings else (0.0, 0.0)
    return {"live": live or 0.0, "ready": ready, "load": load, "warmup": warmup,
            "peak_rss": peak, "steady_rss": steady}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.2, help="size of the weights, GiB")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="modelplane-large-"))
    try:
        print(f"building a model with {args.gib} GiB of external weights in {work} ...")
        started = time.perf_counter()
        rows, size = build(work / "origin" / "model", args.gib)
        print(f"  built in {time.perf_counter() - started:.0f}s ({rows} rows)")
        digest = file_sha256(work / "origin" / "model" / "SHA256SUMS")
        server, base = _serve_folder(work / "origin")
        url = f"{base}/model/"
        cache = work / "cache"
        runs = {}
        for label, cache_dir in (("no cache", None), ("cold cache", cache), ("warm cache", cache)):
            destination = work / "pods" / label.replace(" ", "-") / "model"
            seconds, outcome = _fetch(url, digest, destination, cache_dir)
            runs[label] = {
                "seconds": seconds,
                "outcome": outcome,
                "mib_per_s": size / 2**20 / seconds,
            }
            print(f"  fetch, {label}: {seconds:.1f}s ({outcome})")
        server.shutdown()
        served = _serve(work / "pods" / "warm-cache" / "model", rows, work / "runtime.log")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results = {"weights_bytes": size, "fetch": runs, "serve": served}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "large_model.json").write_text(json.dumps(results, indent=2) + "\n")
    gib = size / GIB

    def rss(value: float) -> str:
        return f"{value / GIB:.2f} GiB ({value / size:.2f}x the weights)"

    rows_out = [(f"fetch, {label} ({run['outcome']})",
                 f"{run['seconds']:.1f} s, {run['mib_per_s']:.0f} MiB/s")
                for label, run in runs.items()]  # fmt: skip
    rows_out += [
        ("load (onnxruntime session)", f"{served['load']:.1f} s"),
        ("warm-up", f"{served['warmup']:.1f} s"),
        ("start to ready", f"{served['ready']:.1f} s"),
        ("peak RSS", rss(served["peak_rss"])),
        ("steady RSS", rss(served["steady_rss"])),
    ]
    print()
    print(f"| {gib:.2f} GiB of external weights | result |")
    print("|---|---|")
    for name, value in rows_out:
        print(f"| {name} | {value} |")
    print(f"\nwritten to {RESULTS / 'large_model.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
