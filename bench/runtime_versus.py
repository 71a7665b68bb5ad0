"""This tree's runtime against another revision's (or against itself restricted to
one consumer's key), both loaded at the same time.

    python bench/runtime_versus.py --baseline d154a1c [--rounds 6] [--concurrency 1 8 32]
    python bench/runtime_versus.py --restricted   # open against keyed, rate-limited

Two runtimes (the baseline's source from ``git archive``, and this working tree's)
serve the same tiny model, both pinned to core 0; two wrk processes on core 1 drive
them at once for each round. Sharing one core, each gets the same CPU time under the
same noise, so the ratio of requests served is the ratio of their costs per request.
Measured one after the other on this kind of machine, the same code differs by up to
15% from round to round; measured together, by about 1%. Prints a table and writes
bench/results/runtime_versus.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelplane_api.access import key_digest, new_key
from runtime_serving import (
    CLIENT_CORE,
    MODELS,
    RESULTS,
    SERVER_CORE,
    make_mlp,
    parse_wrk,
    request_body,
    wait_ready,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from modelplane_testkit.runtime_server import free_port  # noqa: E402

SOURCES = ("runtime", "api")
# make bench's models, and a memory-bound one (its weights, 288 MiB, do not fit in cache).
VERSUS_MODELS = {**MODELS, "memory-bound": [512, 8192, 8192, 512]}
Target = tuple[str, str | None]  # an inference URL, and the key to send (None: none)


def access_file(folder: Path, model: str) -> tuple[Path, str]:
    """One consumer, granted the model, with limits far above what the bench sends (so
    every request pays for the bucket, and none is refused)."""
    key = new_key()
    consumer = {
        "name": "bench",
        "models": [model],
        "keys": [{"sha256": key_digest(key)}],
        "limits": {"requestsPerSecond": 1_000_000, "burst": 1_000_000, "rowsPerSecond": 1e9},
    }
    path = folder / "access.json"
    path.write_text(json.dumps({"consumers": [consumer]}))
    return path, key


def baseline_tree(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, *SOURCES],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            tar.extractall(into, filter="data")
    return into


@contextlib.contextmanager
def runtime(
    source: Path, model: Path, log: Path, access: Path | None = None, name: str = "tiny"
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(source / s) for s in SOURCES),
        "MODELPLANE_INTRA_OP_THREADS": "1",
        "MODELPLANE_INTER_OP_THREADS": "1",
        "MODELPLANE_MAX_BATCH_SIZE": "64",
        "MODELPLANE_LOG_LEVEL": "WARNING",
        "MODELPLANE_GRPC_PORT": str(free_port()),  # two runtimes at once: not the default
    }
    command = [sys.executable, "-m", "modelplane_runtime", "serve", "--model", str(model)]
    if access is not None:
        command += ["--access", str(access)]
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
            yield f"{base}/v2/models/{name}/infer"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def both_at_once(
    targets: tuple[Target, Target], body_file: Path, concurrency: int, seconds: int
) -> list[dict[str, Any]]:
    command = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s"]
    command += ["--latency", "--timeout", "10s", "-s", str(BENCH / "peers" / "post.lua")]
    env = {**os.environ, "BODY_FILE": str(body_file)}
    runs = [
        subprocess.Popen(
            [*command, *(["-H", f"Authorization: Bearer {key}"] if key else []), url],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for url, key in targets
    ]
    outputs = [run.communicate(timeout=seconds + 60)[0] for run in runs]
    return [parse_wrk(output, seconds) for output in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", help="git revision to compare against")
    what.add_argument(
        "--restricted",
        action="store_true",
        help="this tree open against this tree restricted to one consumer's key",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5, help="per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model", choices=list(VERSUS_MODELS), default="tiny")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        model = make_mlp(work / f"{args.model}.onnx", VERSUS_MODELS[args.model])
        body_file = work / "body.json"
        body_file.write_bytes(request_body(VERSUS_MODELS[args.model][0]))
        key: str | None = None
        if args.restricted:
            revision, old, (access, key) = "open", REPO, access_file(work, args.model)
        else:
            revision = _short(args.baseline)
            old, access = baseline_tree(revision, work / "baseline"), None
        with (
            runtime(old, model, work / "baseline.log", name=args.model) as old_url,
            runtime(REPO, model, work / "this.log", access, args.model) as new_url,
        ):
            targets: tuple[Target, Target] = ((old_url, None), (new_url, key))
            for concurrency in args.concurrency:
                both_at_once(targets, body_file, concurrency, 1)  # warm-up
                rounds = [
                    both_at_once(targets, body_file, concurrency, args.seconds)
                    for _ in range(args.rounds)
                ]
                ratios = [new["requests"] / max(old["requests"], 1) for old, new in rounds]
                rows.append(
                    {
                        "concurrency": concurrency,
                        "baseline_requests_per_s": [round(o["requests_per_s"]) for o, _ in rounds],
                        "this_requests_per_s": [round(n["requests_per_s"]) for _, n in rounds],
                        "errors": sum(o["errors"] + n["errors"] for o, n in rounds),
                        "ratio_median": round(statistics.median(ratios), 4),
                        "ratio_min": round(min(ratios), 4),
                        "ratio_max": round(max(ratios), 4),
                    }
                )
    name = "runtime_access_cost.json" if args.restricted else "runtime_versus.json"
    if args.model != "tiny":
        name = name.replace(".json", f"_{args.model}.json")
    args.output = args.output or RESULTS / name
    report = {
        "baseline": revision,
        "this": _describe_tree() + (" restricted (one consumer's key)" if args.restricted else ""),
        "model": args.model,
        "method": "both runtimes on core 0 at once, one wrk -t1 each on core 1",
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "results": rows,
        "took_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"this tree ({report['this']}) against {revision}, {args.rounds} rounds each")
    print(f"{'clients':>7} {'baseline req/s':>15} {'this req/s':>11} {'ratio':>7} {'range':>15}")
    for row in rows:
        old_rate = statistics.median(row["baseline_requests_per_s"])
        new_rate = statistics.median(row["this_requests_per_s"])
        spread = f"{row['ratio_min']:.3f}..{row['ratio_max']:.3f}"
        print(
            f"{row['concurrency']:>7} {old_rate:>15.0f} {new_rate:>11.0f} "
            f"{row['ratio_median']:>7.3f} {spread:>15}"
        )
    print(f"\nwritten to {args.output}")
    return 0


def _short(revision: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _describe_tree() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
