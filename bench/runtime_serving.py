"""Runtime serving benchmark: this runtime against raw onnxruntime, bare Starlette,
KServe and MLServer, on the same machine, model and core.

    python bench/runtime_serving.py [--seconds 6] [--concurrency 1 8 32 64]

Each server runs pinned to core 0 (taskset), the load generator (wrk, one thread)
on core 1, everything on 127.0.0.1. Every server gets the same ONNX file, the same
OIP JSON request and onnxruntime with one intra-op thread. Peers are installed
into their own virtualenvs under bench/.peers (git-ignored) on first use.

Two models: "tiny" (float32 [batch,64] -> 256 -> relu -> 10), where HTTP overhead
dominates, and "heavy" ([batch,1024] -> 4 x 2048 -> 10, 58 MB of weights), where
batching matters. Prints a table, writes bench/results/runtime_serving.json and
draws bench/results/runtime_serving.png.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from modelplane_testkit.runtime_server import free_port  # noqa: E402

PEERS = BENCH / ".peers"
RESULTS = BENCH / "results"
SERVER_CORE, CLIENT_CORE = "0", "1"
PEER_PACKAGES = {
    "kserve": ["kserve", "onnxruntime", "numpy"],
    # MLServer 1.7 fails to start under uvloop 0.22+.
    "mlserver": ["mlserver", "uvloop<0.22", "onnxruntime", "numpy"],
}
MODELS = {"tiny": [64, 256, 10], "heavy": [1024, 2048, 2048, 2048, 2048, 10]}
# modelplane-binary: the same runtime, sent the binary tensor extension (raw float32
# after a JSON header, a binary answer): what JSON parsing costs, and the protocol users
# pick for throughput.
SERVERS = ("bare-starlette", "modelplane", "modelplane-binary", "kserve", "mlserver")
PEERS_COMPARED = ("kserve", "mlserver")
READY_TIMEOUT = 180.0


@dataclass
class Point:
    server: str
    model: str
    concurrency: int
    requests_per_s: float  # successful (2xx) answers per second
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors
    requests: int


@dataclass
class ServerRun:
    server: str
    model: str
    points: list[Point] = field(default_factory=list)
    rss_mib_after: float = 0.0


# --- models and requests ----------------------------------------------------------


def make_mlp(path: Path, widths: list[int]) -> Path:
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    previous = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}"),
        ]
        last = i == len(widths) - 2
        gemm_out = "output" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"]))
            previous = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", widths[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnxruntime 1.31 reads up to IR 13; onnx writes newer
    onnx.save(model, path)
    return path


def request_body(width: int) -> bytes:
    data = np.random.default_rng(1).standard_normal(width).astype(np.float32)
    tensor = {"name": "input", "shape": [1, width], "datatype": "FP32", "data": data.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def row(width: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)


def rest_binary_body(width: int) -> tuple[bytes, int]:
    """A request in the binary tensor extension asking for a binary answer, and the length
    of its JSON header."""
    data = row(width).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, width],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + data, len(header)


# --- peers ------------------------------------------------------------------------------


def ensure_peer(name: str) -> Path:
    """A virtualenv for one peer server, (re)installed when its package list changes."""
    venv = PEERS / name
    stamp = venv / ".packages"
    wanted = json.dumps(PEER_PACKAGES[name])
    if stamp.exists() and stamp.read_text() == wanted:
        return venv / "bin" / "python"
    print(f"installing {name} into {venv} (first run only)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        + PEER_PACKAGES[name],
        check=True,
        timeout=900,
        stderr=subprocess.DEVNULL,
    )
    stamp.write_text(wanted)
    return venv / "bin" / "python"


def server_command(
    server: str, model: Path, name: str, port: int, work: Path, *, grpc_port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """How to start ``server``; ``grpc_port``: its gRPC server there (modelplane, KServe),
    else modelplane's on a port of its own and KServe's off."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if server == "bare-starlette":
        return [
            sys.executable,
            str(BENCH / "peers" / "bare_starlette.py"),
            str(model),
            name,
            str(port),
        ], env
    if server in {"modelplane", "modelplane-binary"}:
        env.update(
            MODELPLANE_INTRA_OP_THREADS="1",
            MODELPLANE_INTER_OP_THREADS="1",
            MODELPLANE_MAX_BATCH_SIZE="64",
            MODELPLANE_LOG_LEVEL="WARNING",
            MODELPLANE_GRPC_PORT=str(grpc_port or free_port()),
        )
        command = [sys.executable, "-m", "modelplane_runtime", "serve", "--model", str(model)]
        return [*command, "--name", name, "--port", str(port)], env
    if server == "kserve":
        python = ensure_peer("kserve")
        command = [str(python), str(BENCH / "peers" / "kserve_onnx.py"), str(model)]
        flags = ["--model_name", name, "--http_port", str(port)]
        flags += (
            ["--enable_grpc", "true", "--grpc_port", str(grpc_port)]
            if grpc_port
            else [
                "--enable_grpc",
                "false",
            ]
        )
        flags += ["--enable_latency_logging", "false", "--workers", "1"]
        return [*command, *flags], env
    if server == "mlserver":
        python = ensure_peer("mlserver")
        folder = work / "mlserver"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(BENCH / "peers" / "mlserver_onnx.py", folder / "mlserver_onnx.py")
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                    "debug": False,
                }
            )
        )
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_onnx.OnnxModel",
                    "parameters": {"uri": str(model)},
                }
            )
        )
        return [str(python.parent / "mlserver"), "start", str(folder)], env
    raise ValueError(server)


@contextlib.contextmanager
def running(
    server: str, model: Path, name: str, work: Path, *, grpc_port: int | None = None
) -> Iterator[tuple[str, int]]:
    """``server`` up on core 0 until the block ends: (base URL, pid)."""
    port = free_port()
    command, env = server_command(server, model, name, port, work, grpc_port=grpc_port)
    log = (work / f"{server}-{name}.log").open("wb")
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, work / f"{server}-{name}.log")
        yield base, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"not ready within {READY_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def check_answer(base: str, name: str, body: bytes, width: int) -> None:
    request = urllib.request.Request(
        f"{base}/v2/models/{name}/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        outputs = json.loads(answer.read())["outputs"]
    assert outputs[0]["shape"] == [1, width], outputs[0]["shape"]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(c) for c in children]
    return total / 1024


# --- load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What wrk sends: a body file and the Lua script (and its environment) that posts it."""

    body_file: Path
    script: str = "post.lua"
    env: tuple[tuple[str, str], ...] = ()


def wrk(url: str, load: Load, concurrency: int, seconds: float) -> dict[str, Any]:
    result = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "peers" / load.script),
            url,
        ],
        env={**os.environ, "BODY_FILE": str(load.body_file), **dict(load.env)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return parse_wrk(result.stdout, seconds)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(output: str, seconds: float) -> dict[str, Any]:
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1))  # type: ignore[union-attr]
    elapsed_match = re.search(r"requests in ([\d.]+)(ms|s|m)", output)
    elapsed = _ms("".join(elapsed_match.groups())) / 1e3 if elapsed_match else seconds  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)\s*$", output, re.MULTILINE)
    return {
        "requests": total,
        "requests_per_s": max(total - errors, 0) / elapsed,
        "errors": errors,
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
    }


def raw_onnxruntime(model: Path, seconds: float) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            "taskset",
            "-c",
            SERVER_CORE,
            sys.executable,
            str(BENCH / "peers" / "raw_onnxruntime.py"),
            str(model),
            str(seconds),
            "1",
            "8",
            "32",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# --- the run --------------------------------------------------------------------------


def bench_model(
    model_name: str, model: Path, loads: dict[str, Load], args: argparse.Namespace, work: Path
) -> list[ServerRun]:
    """All servers up at once (idle ones cost nothing), points interleaved across them.

    This machine is a shared VM whose speed drifts by tens of percent within minutes;
    interleaving puts every server through the same drift, and each point keeps the
    best of ``--rounds`` rounds, for every server alike.
    """
    runs = {server: ServerRun(server, model_name) for server in args.servers}
    with contextlib.ExitStack() as stack:
        urls, pids = {}, {}
        for server in args.servers:
            base, pid = stack.enter_context(running(server, model, model_name, work))
            check_answer(
                base, model_name, loads["json"].body_file.read_bytes(), MODELS[model_name][-1]
            )
            urls[server], pids[server] = f"{base}/v2/models/{model_name}/infer", pid
        best: dict[tuple[str, int], dict[str, Any]] = {}
        for round_number in range(args.rounds):
            for concurrency in args.concurrency:
                for server in args.servers:
                    load = loads["binary" if server == "modelplane-binary" else "json"]
                    wrk(urls[server], load, concurrency, args.warmup)
                    measured = wrk(urls[server], load, concurrency, args.seconds)
                    print(
                        f"  round {round_number + 1} {server:15} {model_name:5} "
                        f"c={concurrency:<3} {measured['requests_per_s']:8.0f} req/s  "
                        f"p50 {measured['p50_ms']:7.2f} ms  p99 {measured['p99_ms']:7.2f} ms  "
                        f"errors {measured['errors']}",
                        flush=True,
                    )
                    key = (server, concurrency)
                    if key not in best or measured["requests_per_s"] > best[key]["requests_per_s"]:
                        errors = measured["errors"] + best.get(key, {}).get("errors", 0)
                        best[key] = {**measured, "errors": errors}
                    else:
                        best[key]["errors"] += measured["errors"]
        for server in args.servers:
            for concurrency in args.concurrency:
                runs[server].points.append(
                    Point(server, model_name, concurrency, **best[(server, concurrency)])
                )
            runs[server].rss_mib_after = rss_mib(pids[server])
        if "modelplane" in urls and model_name == "tiny":
            run_memory_rounds(urls["modelplane"], loads["json"], pids["modelplane"], args)
    return list(runs.values())


MEMORY_ROUNDS: list[float] = []


def run_memory_rounds(url: str, load: Load, pid: int, args: argparse.Namespace) -> None:
    """Repeated identical runs: resident memory after each must not keep growing."""
    for _ in range(args.memory_rounds):
        wrk(url, load, 32, args.seconds)
        MEMORY_ROUNDS.append(rss_mib(pid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=2, help="each point keeps its best round")
    parser.add_argument("--memory-rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "runtime_serving.json")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.stderr.write(
                f"runtime_serving: {tool} is not installed (apt-get install wrk util-linux)\n"
            )
            return 2
    if (os.cpu_count() or 1) < 2:
        sys.stderr.write("runtime_serving: needs two cores (server on one, load on the other)\n")
        return 2
    started = time.monotonic()
    runs: list[ServerRun] = []
    raw: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-") as scratch:
        work = Path(scratch)
        for model_name in args.models:
            widths = MODELS[model_name]
            model = make_mlp(work / f"{model_name}.onnx", widths)
            body_file = work / f"{model_name}.json"
            body_file.write_bytes(request_body(widths[0]))
            binary, header_length = rest_binary_body(widths[0])
            binary_file = work / f"{model_name}.bin"
            binary_file.write_bytes(binary)
            loads = {
                "json": Load(body_file),
                "binary": Load(
                    binary_file, "post_binary.lua", (("HEADER_LENGTH", str(header_length)),)
                ),
            }
            raw[model_name] = raw_onnxruntime(model, min(args.seconds, 3.0))
            best = max(r["rows_per_s"] for r in raw[model_name])
            print(f"{model_name}: raw onnxruntime best {best:.0f} rows/s", flush=True)
            runs += bench_model(model_name, model, loads, args, work)
    report = build_report(runs, raw, args, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print("\nREADME table (requests/s / p99 ms):\n" + markdown_table(report))
    draw(report, args.output.with_suffix(".png"))
    print(f"\nwrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("bentoml", "onnxruntime", "starlette", "uvicorn"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    for peer in PEER_PACKAGES:
        pip = PEERS / peer / "bin" / "pip"
        if pip.exists():
            shown = subprocess.run(
                [str(pip), "show", peer], capture_output=True, text=True, check=False
            )
            found = re.search(r"Version: (\S+)", shown.stdout)
            versions[peer] = found.group(1) if found else "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def _point(runs: list[ServerRun], server: str, model: str, concurrency: int) -> Point | None:
    for run in runs:
        if run.server == server and run.model == model:
            for point in run.points:
                if point.concurrency == concurrency:
                    return point
    return None


def targets(runs: list[ServerRun], raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def best_peer(model: str, concurrency: int) -> tuple[str, float]:
        found = [
            (peer, p.requests_per_s)
            for peer in PEERS_COMPARED
            if (p := _point(runs, peer, model, concurrency)) is not None
        ]
        return max(found, key=lambda f: f[1]) if found else ("none", 0.0)

    ours = _point(runs, "modelplane", "tiny", 32)
    if ours is not None:
        peer, rate = best_peer("tiny", 32)
        checks.append(
            {
                "target": "tiny, c=32: >= 1.25x best peer, p99 < 50 ms, no errors",
                "measured": f"{ours.requests_per_s:.0f} req/s = "
                f"{ours.requests_per_s / max(rate, 1e-9):.2f}x {peer} ({rate:.0f}); "
                f"p99 {ours.p99_ms:.1f} ms; errors {ours.errors}",
                "met": ours.requests_per_s >= 1.25 * rate and ours.p99_ms < 50 and ours.errors == 0,
            }
        )
    single = _point(runs, "modelplane", "tiny", 1)
    if single is not None:
        checks.append(
            {
                "target": "tiny, c=1: p99 < 5 ms",
                "measured": f"p99 {single.p99_ms:.2f} ms",
                "met": single.p99_ms < 5,
            }
        )
    floor = _point(runs, "bare-starlette", "tiny", 32)
    if ours is not None and floor is not None:
        checks.append(
            {
                "target": "tiny, c=32: >= 85% of bare Starlette (the floor)",
                "measured": f"{ours.requests_per_s:.0f} req/s = "
                f"{ours.requests_per_s / max(floor.requests_per_s, 1e-9):.0%} of "
                f"{floor.requests_per_s:.0f}; p99 {ours.p99_ms:.1f} ms against {floor.p99_ms:.1f}",
                "met": ours.requests_per_s >= 0.85 * floor.requests_per_s,
            }
        )
    if "heavy" in raw:
        limit = max(r["rows_per_s"] for r in raw["heavy"])
        for server, share in (("modelplane", 0.7), ("modelplane-binary", 0.9)):
            for concurrency in (32, 64):
                heavy = _point(runs, server, "heavy", concurrency)
                if heavy is None:
                    continue
                peer, rate = best_peer("heavy", concurrency)
                checks.append(
                    {
                        "target": f"heavy, c={concurrency}, {server}: >= {share:.0%} of raw "
                        "onnxruntime at its best batch, >= 2x best peer",
                        "measured": f"{heavy.requests_per_s:.0f} rows/s = "
                        f"{heavy.requests_per_s / limit:.0%} of raw ({limit:.0f} rows/s), "
                        f"{heavy.requests_per_s / max(rate, 1e-9):.2f}x {peer} ({rate:.0f})",
                        "met": heavy.requests_per_s >= share * limit
                        and heavy.requests_per_s >= 2 * rate
                        and heavy.errors == 0,
                    }
                )
    if MEMORY_ROUNDS:
        growth = MEMORY_ROUNDS[-1] - MEMORY_ROUNDS[0]
        checks.append(
            {
                "target": "modelplane RSS does not grow across repeated runs",
                "measured": " -> ".join(f"{m:.1f}" for m in MEMORY_ROUNDS)
                + f" MiB (growth {growth:+.1f})",
                "met": growth < 2.0,
            }
        )
    return checks


def build_report(
    runs: list[ServerRun],
    raw: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    took: float,
) -> dict[str, Any]:
    return {
        "machine": machine(),
        "settings": {
            "seconds_per_point": args.seconds,
            "warmup_seconds": args.warmup,
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
            "load_generator": "wrk -t1 (closed loop, keep-alive)",
            "rounds": args.rounds,
            "onnxruntime_threads": 1,
        },
        "took_seconds": round(took, 1),
        "raw_onnxruntime": raw,
        "points": [asdict(p) for run in runs for p in run.points],
        "rss_mib_after": {f"{r.server}/{r.model}": round(r.rss_mib_after, 1) for r in runs},
        "memory_rounds_mib": [round(m, 1) for m in MEMORY_ROUNDS],
        "targets": targets(runs, raw),
    }


def print_table(report: dict[str, Any]) -> None:
    print("\nserver           model  c    req/s (2xx)   p50 ms   p99 ms  errors")
    for p in report["points"]:
        print(
            f"{p['server']:16} {p['model']:5} {p['concurrency']:<4} {p['requests_per_s']:11.0f} "
            f"{p['p50_ms']:8.2f} {p['p99_ms']:8.2f} {p['errors']:7d}"
        )
    for model, rows in report["raw_onnxruntime"].items():
        cells = ", ".join(f"batch {r['batch']}: {r['rows_per_s']:.0f} rows/s" for r in rows)
        print(f"raw onnxruntime {model}: {cells}")
    print("\nresident memory after each server's runs (MiB):")
    for key, value in report["rss_mib_after"].items():
        print(f"  {key:24} {value:8.1f}")
    print("\ntargets:")
    for check in report["targets"]:
        print(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}: {check['measured']}")


COLUMNS = {
    "modelplane": "modelplane JSON",
    "modelplane-binary": "modelplane binary",
    "bare-starlette": "bare Starlette (floor)",
    "kserve": "KServe",
    "mlserver": "MLServer",
}


def markdown_table(report: dict[str, Any]) -> str:
    """The README's table: requests/s / p99 ms per model, concurrency and server."""
    points = {(p["server"], p["model"], p["concurrency"]): p for p in report["points"]}
    servers = [s for s in COLUMNS if any(key[0] == s for key in points)]
    lines = [
        "| model | concurrency | " + " | ".join(COLUMNS[s] for s in servers) + " |",
        "|---|---|" + "---|" * len(servers),
    ]
    for model, concurrency in sorted(
        {(key[1], key[2]) for key in points}, key=lambda mc: (list(MODELS).index(mc[0]), mc[1])
    ):
        cells = []
        for server in servers:
            point = points.get((server, model, concurrency))
            cells.append(f"{point['requests_per_s']:.0f} / {point['p99_ms']:.1f}" if point else "-")
        lines.append(f"| {model} | {concurrency} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - the bench extra; only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = sorted({p["model"] for p in report["points"]}, key=list(MODELS).index)
    figure, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        for server in SERVERS:
            points = [p for p in report["points"] if p["model"] == model and p["server"] == server]
            if not points:
                continue
            xs = [p["concurrency"] for p in points]
            axes[0][column].plot(
                xs, [p["requests_per_s"] for p in points], marker="o", label=server
            )
            axes[1][column].plot(xs, [p["p99_ms"] for p in points], marker="o", label=server)
        best = max(r["rows_per_s"] for r in report["raw_onnxruntime"][model])
        served = max(p["requests_per_s"] for p in report["points"] if p["model"] == model)
        title = f"{model} model: successful requests/s (one server core)"
        if best < 3 * served:
            axes[0][column].axhline(
                best, linestyle="--", color="grey", label="raw onnxruntime (best batch)"
            )
        else:  # a line that far up would flatten every server's curve
            title += f"\nraw onnxruntime: {best:,.0f} rows/s, off the chart"
        axes[0][column].set_title(title)
        axes[1][column].set_title(f"{model} model: p99 latency (ms)")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xlabel("concurrent connections")
            axes[row][column].grid(True, alpha=0.3)
        axes[1][column].set_yscale("log")
        axes[0][column].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
