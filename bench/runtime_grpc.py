"""gRPC against REST with binary tensors: one runtime, the same model, core and load.

    python bench/runtime_grpc.py [--rounds 5] [--seconds 5] [--concurrency 32]

One runtime serves each model (runtime_serving.py's tiny and heavy) pinned to core 0, both
protocols at once; the load generators run on core 1, one at a time, in alternating rounds:
wrk with REST requests in the binary tensor extension (raw little-endian input, binary
output), and h2load with gRPC ModelInfer calls (raw_input_contents, as tritonclient.grpc
sends them) over one connection (as one gRPC channel carries them) and over one connection
per call. Each is a closed loop with ``--concurrency`` calls in flight.

Each round reports answers per second and the server's CPU time per answer (all its
threads, from /proc): on a machine shared with other work, rounds differ by up to 15% in
throughput (see runtime_versus.py), less in CPU per answer. Errors are what the client saw
fail and what the runtime counted as failed (h2load counts HTTP/2 answers; a gRPC error
travels in the trailers of one). Needs wrk and h2load (Debian's nghttp2-client) and two
cores; writes bench/results/runtime_grpc.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime_serving import (
    CLIENT_CORE,
    MODELS,
    RESULTS,
    SERVER_CORE,
    make_mlp,
    rest_binary_body,
    row,
    wait_ready,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from modelplane_runtime.grpc_protocol import InferInputTensor, ModelInferRequest  # noqa: E402
from modelplane_testkit.runtime_server import free_port  # noqa: E402

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
LOADS = ("rest-binary", "grpc-1-connection", "grpc-1-connection-per-call")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def grpc_body(name: str, width: int) -> bytes:
    """One ModelInferRequest as a gRPC message on the wire (uncompressed, length-prefixed)."""
    tensor = InferInputTensor(name="input", datatype="FP32", shape=[1, width])
    request = ModelInferRequest(
        model_name=name, inputs=[tensor], raw_input_contents=[row(width).tobytes()]
    )
    message: bytes = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


@contextlib.contextmanager
def runtime(model: Path, name: str, log: Path) -> Iterator[tuple[str, int, int]]:
    """A runtime on core 0: its base URL, its gRPC port and its process id."""
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_INTER_OP_THREADS": "1",
        "MODELPLANE_MAX_BATCH_SIZE": "64",
        "MODELPLANE_LOG_LEVEL": "WARNING",
        "MODELPLANE_GRPC_PORT": str(grpc_port),
    }
    command = [sys.executable, "-m", "modelplane_runtime", "serve", "--model", str(model)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command, "--name", name, "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, log)
            yield base, grpc_port, process.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, user and system, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def answered(base: str, name: str) -> tuple[float, float]:
    """Inference requests the runtime answered: (successfully, not), from /metrics rendered
    after the call (it renders at most once a second)."""
    pattern = re.compile(
        rf'^modelplane_inference_requests_total\{{model="{name}",outcome="(\w+)"\}} (\S+)$'
    )
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
            age = float(answer.headers.get("Modelplane-Metrics-Age", "0"))
            text = answer.read().decode()
        if age == 0.0 or time.monotonic() > deadline:
            break
        time.sleep(max(0.05, 1.0 - age))
    counts = {m.group(1): float(m.group(2)) for m in map(pattern.match, text.splitlines()) if m}
    success = counts.pop("success", 0.0)
    counts.pop("client_closed", None)  # a load generator's calls in flight as it stops
    return success, sum(counts.values())


def load_command(load: str, target: dict[str, Any], concurrency: int, seconds: int) -> list[str]:
    on_client = ["taskset", "-c", CLIENT_CORE]
    if load == "rest-binary":
        wrk = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
        return [*on_client, *wrk, "-s", str(BENCH / "peers" / "post_binary.lua"), target["url"]]
    connections = 1 if load == "grpc-1-connection" else concurrency
    h2load = ["h2load", "-D", str(seconds), "-c", str(connections)]
    h2load += ["-m", str(concurrency // connections), "-d", str(target["grpc_file"])]
    h2load += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    return [*on_client, *h2load, f"http://127.0.0.1:{target['grpc_port']}{GRPC_PATH}"]


def one_round(
    load: str, target: dict[str, Any], concurrency: int, seconds: int
) -> dict[str, float]:
    """One load for ``seconds``: answers per second, server CPU per answer, and errors (what
    the client saw fail, and what the server answered with an error)."""
    (ok_before, failed_before), cpu_before = (
        answered(target["base"], target["name"]),
        cpu_seconds(target["pid"]),
    )
    started = time.monotonic()
    run = subprocess.run(
        load_command(load, target, concurrency, seconds),
        env={**os.environ, **target["env"]},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(target["pid"]) - cpu_before
    ok, failed = answered(target["base"], target["name"])
    ok -= ok_before
    client_errors = _wrk_errors(run.stdout) if load == "rest-binary" else _h2load_errors(run.stdout)
    return {
        "requests_per_s": ok / elapsed,
        "cpu_us_per_request": cpu / max(ok, 1) * 1e6,
        "errors": client_errors + failed - failed_before,
    }


def _wrk_errors(output: str) -> int:
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return (int(bad.group(1)) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0)


def _h2load_errors(output: str) -> int:
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if found is None:
        raise RuntimeError(f"h2load said:\n{output}")
    return int(found.group(1)) - int(found.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", type=Path, default=RESULTS / "runtime_grpc.json")
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            raise SystemExit(f"{tool} is missing: apt-get install wrk nghttp2-client")
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for name in args.models:
            width = MODELS[name][0]
            model = make_mlp(work / f"{name}.onnx", MODELS[name])
            body, header_length = rest_binary_body(width)
            (work / f"{name}.rest").write_bytes(body)
            (work / f"{name}.grpc").write_bytes(grpc_body(name, width))
            with runtime(model, name, work / f"{name}.log") as (base, grpc_port, pid):
                target = {
                    "name": name,
                    "base": base,
                    "url": f"{base}/v2/models/{name}/infer",
                    "grpc_port": grpc_port,
                    "grpc_file": work / f"{name}.grpc",
                    "pid": pid,
                    "env": {
                        "BODY_FILE": str(work / f"{name}.rest"),
                        "HEADER_LENGTH": str(header_length),
                    },
                }
                for load in LOADS:  # warm-up
                    one_round(load, target, args.concurrency, 1)
                rounds: dict[str, list[dict[str, float]]] = {load: [] for load in LOADS}
                for _ in range(args.rounds):
                    for load in LOADS:
                        rounds[load].append(one_round(load, target, args.concurrency, args.seconds))
            for load, measured in rounds.items():
                results.append(
                    {
                        "model": name,
                        "load": load,
                        "concurrency": args.concurrency,
                        "requests_per_s": [round(m["requests_per_s"]) for m in measured],
                        "cpu_us_per_request": [round(m["cpu_us_per_request"]) for m in measured],
                        "errors": int(sum(m["errors"] for m in measured)),
                    }
                )
    report = {
        "method": "one runtime on core 0 serving both protocols; wrk -t1 (REST, binary "
        "tensors) and h2load (gRPC, raw_input_contents) on core 1, in alternating rounds",
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "results": results,
        "took_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gRPC against REST binary, {args.concurrency} in flight, {args.rounds} rounds each")
    print(f"{'model':>6} {'load':>27} {'req/s':>7} {'vs REST':>8} {'CPU us/req':>11} {'errors':>7}")
    for line in results:
        rest = next(
            r for r in results if r["model"] == line["model"] and r["load"] == "rest-binary"
        )
        rate = statistics.median(line["requests_per_s"])
        ratio = rate / max(statistics.median(rest["requests_per_s"]), 1)
        cpu = statistics.median(line["cpu_us_per_request"])
        print(
            f"{line['model']:>6} {line['load']:>27} {rate:>7.0f} {ratio:>8.2f} {cpu:>11.0f} "
            f"{line['errors']:>7}"
        )
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
