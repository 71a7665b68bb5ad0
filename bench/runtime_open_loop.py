"""Open-loop latency: the highest Poisson arrival rate each server sustains with its p99
under a bound, per model and protocol.

    python bench/runtime_open_loop.py [--seconds 3] [--warmup 1] [--steps 6] [--quick]

A closed loop (wrk, runtime_serving.py) sends the next request only when an answer comes
back, so a server that stalls also stalls its load and its slow answers are under-counted
(coordinated omission). Here requests arrive at Poisson times drawn for a target rate, each
latency counted from its INTENDED send time: a request that finds no free connection, or
whose send the generator could not make on time, carries that wait in its latency.

The generator is this script, pinned to core 1 (the servers to core 0, as in
runtime_serving.py, started the same way and with the same models and requests), on
127.0.0.1 only:

- REST: HTTP/1.1 keep-alive connections over asyncio protocols on uvloop, responses parsed
  by httptools. A due request takes an idle connection, or opens one (at most
  ``--connections``), or waits in line for the next free one; the wait counts.
- gRPC: one grpc.aio channel (as one client would), at most ``--connections`` calls in
  flight, the rest waiting in line likewise; the message is runtime_grpc.py's
  (raw_input_contents), sent as pre-serialized bytes.

Send lag is when the generator dispatched a request minus its intended time; a step whose
send-lag p99 is over 1 ms says nothing about the server and counts as generator-bound. The
generator's own ceiling is measured first against bare Starlette on the tiny model.

For each (server, model, protocol): a closed-loop probe (32 in flight, 1.5 s) gives a
throughput X; then steps of ``--warmup`` + ``--seconds`` of open-loop load search, by
geometric bisection starting at 0.6 X, for the highest rate whose measured window has
p99 < bound, no errors and nothing unanswered; a failing rate is tried ``--attempts`` times.
Bounds: tiny 10 ms; heavy 3x the batch compute time, which is raw onnxruntime's p50 run time
at batch 32 on core 0, measured in the same run (bench/peers/raw_onnxruntime.py).

This VM is shared with other work: each step counts the CPU time that processes other than
the generator and the servers took on the two cores, and a step where that was over
OTHERS_LIMIT is rerun (``--disturbed-retries``) and flagged if it stays over.
``--servers``/``--models`` with ``--merge`` rerun some points into an existing results file.
Prints a table and writes bench/results/runtime_open_loop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httptools
import numpy as np
import uvloop

from runtime_grpc import grpc_body
from runtime_serving import (
    BENCH,
    CLIENT_CORE,
    MODELS,
    RESULTS,
    SERVER_CORE,
    check_answer,
    machine,
    make_mlp,
    request_body,
    rest_binary_body,
    running,
)

sys.path.insert(0, str(BENCH.parent / "tests"))

from modelplane_runtime.grpc_protocol import ModelInferResponse
from modelplane_testkit.runtime_server import free_port

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
# (server, protocol) pairs measured; KServe's gRPC is its own ModelServer's grpc.aio server.
TARGETS = (
    ("modelplane", "rest-json"),
    ("modelplane", "rest-binary"),
    ("modelplane", "grpc"),
    ("bare-starlette", "rest-json"),
    ("kserve", "rest-json"),
    ("kserve", "grpc"),
    ("mlserver", "rest-json"),
)
TINY_BOUND_MS = 10.0
HEAVY_BOUND_FACTOR = 3.0
HEAVY_BOUND_BATCH = 32
SEND_LAG_LIMIT_MS = 1.0
# Other processes on the two cores during a step, in cores' worth: over this, the step is
# run again (up to --disturbed-retries times, within --budget-minutes) and flagged if it
# stays over. An idle VM shows 0.01-0.02 (kernel threads, the sandbox's own agent).
OTHERS_LIMIT = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROBE_CONCURRENCY = 32
PROBE_SECONDS = 1.5


# --- the generator -----------------------------------------------------------------------------


class Recorder:
    """Per request: intended, dispatched and finished times, and whether it succeeded.

    Requests whose intended time falls in [measure_from, measure_to) are the measured ones;
    ``over`` counts those answered later than the bound, so that a step that has already
    failed can stop early."""

    def __init__(self, intended: list[float], measure_from: float, measure_to: float, bound: float):
        self.intended = intended
        self.dispatched = [math.nan] * len(intended)
        self.done = [math.nan] * len(intended)
        self.ok = [False] * len(intended)
        self.measure_from, self.measure_to, self.bound = measure_from, measure_to, bound
        self.over = 0
        self.outstanding = 0
        self.waiting: deque[int] = deque()

    def finish(self, index: int, ok: bool) -> None:
        now = time.perf_counter()
        self.done[index] = now
        self.ok[index] = ok
        self.outstanding -= 1
        intended = self.intended[index]
        if self.measure_from <= intended < self.measure_to and (
            not ok or now - intended > self.bound
        ):
            self.over += 1

    def oldest_wait(self, now: float) -> float:
        return now - self.intended[self.waiting[0]] if self.waiting else 0.0


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection carrying one request at a time."""

    def __init__(self, load: HttpLoad) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, index: int) -> None:
        self.current = index
        assert self.transport is not None
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.abort()

    def on_message_complete(self) -> None:
        index, self.current = self.current, -1
        if index >= 0:
            self.load.answered(self, index, 200 <= self.parser.get_status_code() < 300)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class HttpLoad:
    """Open-loop REST: due requests take an idle connection, open one, or wait in line."""

    def __init__(self, port: int, request: bytes, cap: int, recorder: Recorder) -> None:
        self.port, self.request, self.cap, self.recorder = port, request, cap, recorder
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.opening = 0
        self.stopped = False
        self.peak_connections = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def dispatch(self, index: int, now: float) -> None:
        recorder = self.recorder
        recorder.dispatched[index] = now
        recorder.outstanding += 1
        if self.idle:
            self.idle.pop().send(index)
            return
        recorder.waiting.append(index)
        if len(self.connections) + self.opening < self.cap:
            self._start_opening()

    def _start_opening(self) -> None:
        self.opening += 1
        task = self.loop.create_task(self._open())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self) -> None:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), "127.0.0.1", self.port
            )
        except OSError:
            self.opening -= 1
            if self.recorder.waiting:  # a refused connection fails the request it was for
                self.recorder.finish(self.recorder.waiting.popleft(), False)
            return
        self.opening -= 1
        self.connections.add(connection)
        self.peak_connections = max(self.peak_connections, len(self.connections))
        self._free(connection)

    def _free(self, connection: _Connection) -> None:
        if self.stopped:
            return
        if self.recorder.waiting:
            connection.send(self.recorder.waiting.popleft())
        else:
            self.idle.append(connection)

    def answered(self, connection: _Connection, index: int, ok: bool) -> None:
        self.recorder.finish(index, ok)
        self._free(connection)

    def lost(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        if connection.current >= 0:
            self.recorder.finish(connection.current, False)
            connection.current = -1
        waiting = self.recorder.waiting
        if not self.stopped and waiting and len(self.connections) + self.opening < self.cap:
            self._start_opening()

    async def close(self) -> None:
        self.stopped = True
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)


class GrpcLoad:
    """Open-loop gRPC over one channel: at most ``cap`` calls in flight, the rest in line."""

    def __init__(self, port: int, message: bytes, cap: int, recorder: Recorder) -> None:
        self.message, self.cap, self.recorder = message, cap, recorder
        self.loop = asyncio.get_running_loop()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        # No (de)serializers: bytes in, bytes out.
        self.infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            GRPC_PATH
        )
        self.in_flight = 0
        self.stopped = False
        self.peak_connections = 1
        self.tasks: set[asyncio.Task[None]] = set()

    async def ready(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), 10)

    def dispatch(self, index: int, now: float) -> None:
        self.recorder.dispatched[index] = now
        self.recorder.outstanding += 1
        if self.in_flight < self.cap:
            self.in_flight += 1
            task = self.loop.create_task(self._call(index))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.recorder.waiting.append(index)

    async def _call(self, index: int) -> None:
        while not self.stopped:  # a task started after close() has nothing to do
            try:
                await self.infer(self.message, timeout=30)
                ok = True
            except (grpc.aio.AioRpcError, grpc.aio.UsageError):
                ok = False
            self.recorder.finish(index, ok)
            if self.stopped or not self.recorder.waiting:
                self.in_flight -= 1
                return
            index = self.recorder.waiting.popleft()

    async def close(self) -> None:
        self.stopped = True
        await self.channel.close(grace=None)


@dataclass
class Step:
    rate: float  # offered (target) requests/s
    achieved_per_s: float  # successful answers per second in the measured window
    measured: int  # requests intended in the measured window
    p50_ms: float
    p99_ms: float  # unanswered requests count as infinitely late
    errors: int  # non-2xx answers, failed calls, refused or dropped connections
    unanswered: int
    send_lag_p99_ms: float
    client_cpu: float  # share of core 1 the generator used, spinning before sends included
    connections: int  # most connections open at once (gRPC: one channel)
    stopped_early: bool
    passed: bool = False
    generator_bound: bool = False
    others_cpu: float = 0.0  # cores' worth of CPU other processes used during the step
    disturbed: bool = False  # others_cpu over OTHERS_LIMIT: this VM's other work got in


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _open_loop(
    make_load: Callable[[Recorder], HttpLoad | GrpcLoad],
    rate: float,
    *,
    warmup: float,
    seconds: float,
    bound: float,
    seed: int,
) -> Step:
    gaps = np.random.default_rng(seed).exponential(
        1.0 / rate, int(rate * (warmup + seconds) * 1.2) + 10
    )
    start = time.perf_counter() + 0.05
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < warmup + seconds]
    intended = (start + offsets).tolist()
    recorder = Recorder(intended, start + warmup, start + warmup + seconds, bound)
    load = make_load(recorder)
    if isinstance(load, GrpcLoad):
        await load.ready()
    expected = rate * seconds
    give_up_over = 0.01 * expected + 1  # this many late answers already fail the p99
    give_up_wait = max(0.5, 20 * bound)  # a request waiting this long for a connection
    cpu_before, wall_before = _cpu(), time.perf_counter()
    stopped_early = False
    count, index = len(intended), 0
    sleep = asyncio.sleep
    perf_counter = time.perf_counter
    while index < count:
        now = perf_counter()
        while index < count and intended[index] <= now:
            load.dispatch(index, now)
            index += 1
        if recorder.over > give_up_over or recorder.oldest_wait(now) > give_up_wait:
            stopped_early = True
            break
        if index < count:
            ahead = intended[index] - perf_counter()
            # Timers are millisecond-grained: sleep only while far ahead, then spin (core 1
            # is the generator's own), letting I/O through on every turn.
            await sleep(ahead - 0.0015 if ahead > 0.002 else 0)
    drain_until = perf_counter() + max(1.0, 5 * bound)
    while not stopped_early and recorder.outstanding > 0 and perf_counter() < drain_until:
        await sleep(0.001)
        if recorder.over > give_up_over:
            stopped_early = True
    cpu = (_cpu() - cpu_before) / max(perf_counter() - wall_before, 1e-9)
    summary = _summary(
        recorder,
        rate=rate,
        seconds=seconds,
        cpu=cpu,
        connections=load.peak_connections,
        stopped_early=stopped_early,
    )
    await load.close()
    return summary


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(
    recorder: Recorder,
    *,
    rate: float,
    seconds: float,
    cpu: float,
    connections: int,
    stopped_early: bool,
) -> Step:
    latencies, lags = [], []
    errors = unanswered = successes = 0
    for i, intended in enumerate(recorder.intended):
        if not recorder.measure_from <= intended < recorder.measure_to:
            continue
        if not math.isnan(recorder.dispatched[i]):
            lags.append(recorder.dispatched[i] - intended)
        if math.isnan(recorder.done[i]):
            unanswered += 1
            latencies.append(math.inf)
            continue
        latencies.append(recorder.done[i] - intended)
        if recorder.ok[i]:
            successes += 1
        else:
            errors += 1
    return Step(
        rate=round(rate, 1),
        achieved_per_s=round(successes / seconds, 1),
        measured=len(latencies),
        p50_ms=round(_percentile(latencies, 0.50) * 1e3, 3),
        p99_ms=round(_percentile(latencies, 0.99) * 1e3, 3),
        errors=errors,
        unanswered=unanswered,
        send_lag_p99_ms=round(_percentile(lags, 0.99) * 1e3, 3),
        client_cpu=round(cpu, 3),
        connections=connections,
        stopped_early=stopped_early,
    )


async def _closed_loop(
    make_load: Callable[[Recorder], HttpLoad | GrpcLoad], seconds: float
) -> tuple[float, float]:
    """Answers per second with PROBE_CONCURRENCY requests always in flight (all of them due
    at once, at most that many connections or calls, each freed one taking the next), and
    the generator's CPU time per answer (no spinning here: the loop waits on I/O)."""
    count = 200_000
    cpu_before = _cpu()
    start = time.perf_counter()
    recorder = Recorder([start] * count, start, start + seconds, math.inf)
    load = make_load(recorder)
    if isinstance(load, GrpcLoad):
        await load.ready()
    for index in range(count):  # they queue; cheap, no I/O until the loop turns
        load.dispatch(index, start)
    await asyncio.sleep(seconds)
    answered = sum(1 for ok in recorder.ok if ok)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu_before
    await load.close()
    return answered / elapsed, cpu / max(answered, 1) * 1e6


@dataclass
class Target:
    server: str
    model: str
    protocol: str
    port: int
    payload: bytes  # a whole HTTP request, or a serialized ModelInferRequest


def _load_factory(target: Target, cap: int) -> Callable[[Recorder], HttpLoad | GrpcLoad]:
    def make(recorder: Recorder) -> HttpLoad | GrpcLoad:
        if target.protocol == "grpc":
            return GrpcLoad(target.port, target.payload, cap, recorder)
        return HttpLoad(target.port, target.payload, cap, recorder)

    return make


def _run(coroutine: Any, protocol: str) -> Any:
    """One step in a fresh event loop: uvloop for REST; grpc.aio wants asyncio's own."""
    gc.collect()
    gc.disable()
    try:
        factory = None if protocol == "grpc" else uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)
    finally:
        gc.enable()


def cores_busy() -> float:
    """CPU seconds spent in processes (user, nice, system) on both cores so far."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name in {f"cpu{SERVER_CORE}", f"cpu{CLIENT_CORE}"}:
            total += int(fields[0]) + int(fields[1]) + int(fields[2])
    return total / CLOCK_TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants so far (user and system)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total / CLOCK_TICKS


SERVER_PIDS: list[int] = []  # the servers up now (serving() keeps it)


def ours() -> float:
    """CPU seconds of this process (the generator), its finished children (raw onnxruntime)
    and every server up, so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _cpu() + children.ru_utime + children.ru_stime + sum(map(tree_cpu, SERVER_PIDS))


class OthersMeter:
    """Cores' worth of CPU that processes other than the generator and the servers used."""

    def __init__(self) -> None:
        self.start = (time.monotonic(), cores_busy(), ours())

    def read(self) -> float:
        wall, busy, own = self.start
        theirs = cores_busy() - busy - (ours() - own)
        return max(theirs, 0.0) / max(time.monotonic() - wall, 1e-9)


def step(target: Target, rate: float, bound: float, args: argparse.Namespace, seed: int) -> Step:
    factory = _load_factory(target, args.connections)
    meter = OthersMeter()
    result: Step = _run(
        _open_loop(factory, rate, warmup=args.warmup, seconds=args.seconds, bound=bound, seed=seed),
        target.protocol,
    )
    result.others_cpu = round(meter.read(), 3)
    result.disturbed = result.others_cpu > OTHERS_LIMIT
    result.generator_bound = result.send_lag_p99_ms > SEND_LAG_LIMIT_MS
    result.passed = (
        not result.generator_bound
        and not result.stopped_early
        and result.errors == 0
        and result.unanswered == 0
        and result.p99_ms < bound * 1e3
    )
    return result


def attempts(
    target: Target,
    rate: float,
    bound: float,
    args: argparse.Namespace,
    *,
    seed: int,
    log: list[Step],
) -> Step:
    """One rate, tried again while it fails, up to ``--attempts`` times: this VM is shared,
    and a burst of other work on either core fails a step that a quiet one passes (as
    runtime_serving.py keeps each point's best round); a try during which other processes
    took over OTHERS_LIMIT of the cores is run again, up to ``--disturbed-retries`` times.
    Every try goes into ``log``."""
    result: Step | None = None
    for attempt in range(args.attempts):
        for retry in range(args.disturbed_retries + 1):
            result = step(target, rate, bound, args, seed=seed * 100 + attempt * 10 + retry)
            log.append(result)
            print(
                f"    {rate:8.0f}/s -> {'pass' if result.passed else 'FAIL'}  p50 "
                f"{result.p50_ms:8.2f}  p99 {result.p99_ms:8.2f} ms  errors {result.errors}  "
                f"unanswered {result.unanswered}  lag p99 {result.send_lag_p99_ms:.3f} ms  "
                f"conns {result.connections}  others {result.others_cpu:.2f}"
                f"{'  (stopped early)' if result.stopped_early else ''}"
                f"{'  DISTURBED' if result.disturbed else ''}",
                flush=True,
            )
            if result.passed or not result.disturbed or time.monotonic() > args.deadline:
                break
            time.sleep(1.0)  # other work on the cores: let it pass, try again
        if result is not None and result.passed:
            break
    assert result is not None
    return result


def probe(target: Target) -> tuple[float, float]:
    """The closed-loop probe: answers per second, and the generator's CPU us per answer."""
    found: tuple[float, float] = _run(
        _closed_loop(_load_factory(target, PROBE_CONCURRENCY), PROBE_SECONDS), target.protocol
    )
    return found


# --- the search --------------------------------------------------------------------------------


def search(target: Target, bound: float, args: argparse.Namespace) -> dict[str, Any]:
    """The highest rate that passes, by geometric bisection between the closed-loop probe's
    throughput X (1.2 X assumed failing, and tried if everything below it passes) and X/20."""
    capacity, client_us = probe(target)
    print(
        f"  {target.server:14} {target.model:5} {target.protocol:11} closed-loop probe "
        f"{capacity:7.0f}/s (generator {client_us:.0f} us CPU per answer); "
        f"bound {bound * 1e3:.1f} ms",
        flush=True,
    )
    if capacity < 1:
        raise RuntimeError(f"{target}: the closed-loop probe got no answers")
    floor = max(capacity / 20, 1.0)
    passed: Step | None = None
    failed: Step | None = None
    upper, upper_tried = 1.2 * capacity, False  # assumed failing until tried
    rate = 0.6 * capacity
    steps: list[Step] = []
    for number in range(args.steps):
        result = attempts(target, rate, bound, args, seed=number, log=steps)
        if result.passed:
            passed = result
            if rate >= upper:  # the assumed limit passed: look higher
                upper = 1.5 * rate
        else:
            failed, upper, upper_tried = result, rate, True
        if passed is None:
            rate /= 2
            if rate < floor:
                break
        elif upper / passed.rate >= 1 + args.resolution:
            rate = math.sqrt(passed.rate * upper)
        elif upper_tried:
            break
        else:
            rate = upper
    # What failed the lowest failing rate: the server, unless only the generator's own lag
    # (which every latency carries) put the p99 over the bound.
    limited_by = "nothing failed"
    if failed is not None:
        server_late = failed.stopped_early or failed.errors or failed.unanswered
        server_late = server_late or failed.p99_ms - failed.send_lag_p99_ms >= bound * 1e3
        limited_by = "server" if server_late or not failed.generator_bound else "generator"
    return {
        "server": target.server,
        "model": target.model,
        "protocol": target.protocol,
        "bound_ms": round(bound * 1e3, 2),
        "closed_loop_probe_per_s": round(capacity, 1),
        "probe_client_cpu_us_per_answer": round(client_us, 1),
        "rate_per_s": passed.rate if passed else 0.0,
        "at_rate": asdict(passed) if passed else None,
        "lowest_failing": asdict(failed) if failed else None,
        "limited_by": limited_by,
        "steps": [asdict(s) for s in steps],
    }


def generator_ceiling(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Rising rates against bare Starlette's tiny model until the generator falls behind its
    schedule (send-lag p99 over 1 ms) or the server stops keeping up (under 97% of the
    offered rate answered, or anything left waiting); and the generator's CPU per answer in
    a closed loop, whose inverse bounds what one core of it could send."""
    capacity, client_us = probe(target)
    print(
        f"  generator: {client_us:.0f} us CPU per answer in a closed loop against "
        f"{target.server} ({capacity:.0f}/s), so at most ~{1e6 / client_us:.0f}/s on one core",
        flush=True,
    )
    steps, kept, stop_reason = [], None, "nothing: no rate up to 40000/s failed"
    rate = 2000.0
    short = argparse.Namespace(**{**vars(args), "warmup": 0.5, "seconds": min(args.seconds, 2.0)})
    while rate <= 40_000:
        for attempt in range(args.attempts + args.disturbed_retries):
            result = step(target, rate, 1.0, short, seed=attempt)
            steps.append(asdict(result))
            if not (result.generator_bound or result.disturbed):
                break
            if result.disturbed and time.monotonic() > args.deadline:
                break
            time.sleep(1.0)
        print(
            f"  generator at {rate:7.0f}/s: answered {result.achieved_per_s:7.0f}/s, "
            f"send-lag p99 {result.send_lag_p99_ms:.3f} ms, p99 {result.p99_ms:.2f} ms, "
            f"connections {result.connections}, others {result.others_cpu:.2f}"
            f"{'  DISTURBED' if result.disturbed else ''}",
            flush=True,
        )
        if result.generator_bound:
            stop_reason = "the generator fell behind its schedule"
            break
        if result.achieved_per_s < 0.97 * rate or result.unanswered or result.stopped_early:
            stop_reason = "the server fell behind (answered under 97% of the offered rate)"
            break
        kept = result
        rate *= 1.5
    return {
        "against": "bare-starlette tiny, REST JSON",
        "highest_rate_kept_per_s": kept.rate if kept else 0.0,
        "send_lag_p99_ms_there": kept.send_lag_p99_ms if kept else None,
        "next_step_stopped_by": stop_reason,
        "closed_loop_client_cpu_us_per_answer": round(client_us, 1),
        "closed_loop_answers_per_s": round(capacity, 1),
        "steps": steps,
    }


# --- servers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(server: str, model: Path, name: str, work: Path) -> Iterator[tuple[str, int, int]]:
    """runtime_serving.py's server on core 0, with gRPC on where measured: (base URL, REST
    port, gRPC port or 0)."""
    grpc_port = free_port() if any(s == server and p == "grpc" for s, p in TARGETS) else 0
    with running(server, model, name, work, grpc_port=grpc_port or None) as (base, pid):
        SERVER_PIDS.append(pid)
        try:
            yield base, int(base.rsplit(":", 1)[1]), grpc_port
        finally:
            SERVER_PIDS.remove(pid)


def http_request(port: int, name: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST /v2/models/{name}/infer HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def check_grpc(port: int, message: bytes, width: int) -> None:
    """One ModelInfer call, its answer parsed: the right shape, before any load."""

    async def call() -> bytes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GRPC_PATH)
            answer: bytes = await infer(message, timeout=30)
            return answer

    with asyncio.Runner() as runner:
        response = ModelInferResponse.FromString(runner.run(call()))
    assert list(response.outputs[0].shape) == [1, width], response.outputs[0].shape


def batch_compute_ms(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Raw onnxruntime on core 0, one thread: p50 run time at batch 1 and at batch 32; run
    again while other work disturbed it, as the load steps are."""
    for _ in range(args.disturbed_retries + 1):
        meter = OthersMeter()
        result = subprocess.run(
            [
                *("taskset", "-c", SERVER_CORE, sys.executable),
                *(str(BENCH / "peers" / "raw_onnxruntime.py"), str(model), "2", "1"),
                str(HEAVY_BOUND_BATCH),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        others = meter.read()
        if others <= OTHERS_LIMIT or time.monotonic() > args.deadline:
            break
        time.sleep(1.0)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    found: dict[str, Any] = {str(r["batch"]): r for r in rows}
    found["others_cpu"] = round(others, 3)
    return found


# --- the run -----------------------------------------------------------------------------------


def targets_for(name: str, ports: dict[str, tuple[int, int]]) -> Iterator[Target]:
    """Each measured (server, protocol) whose server is up, with its request."""
    widths = MODELS[name]
    json_request = request_body(widths[0])
    binary_request, header_length = rest_binary_body(widths[0])
    for server, protocol in TARGETS:
        if server not in ports:
            continue
        port, grpc_port = ports[server]
        if protocol == "grpc":
            message = grpc_body(name, widths[0])[5:]  # less the gRPC frame's 5-byte prefix
            yield Target(server, name, protocol, grpc_port, message)
        elif protocol == "rest-binary":
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(header_length),
            }
            request = http_request(port, name, binary_request, headers)
            yield Target(server, name, protocol, port, request)
        else:
            headers = {"Content-Type": "application/json"}
            yield Target(
                server, name, protocol, port, http_request(port, name, json_request, headers)
            )


def measure_model(name: str, args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    """One model: its bound, its servers up at once on core 0 (idle ones cost nothing), each
    (server, protocol) searched in turn."""
    widths = MODELS[name]
    model = make_mlp(work / f"{name}.onnx", widths)
    compute = report["raw_onnxruntime"][name] = batch_compute_ms(model, args)
    at_batch = compute[str(HEAVY_BOUND_BATCH)]["p50_ms"]
    bound = (HEAVY_BOUND_FACTOR * at_batch if name == "heavy" else TINY_BOUND_MS) / 1e3
    print(
        f"{name}: raw onnxruntime p50 {compute['1']['p50_ms']:.3f} ms at batch 1, "
        f"{at_batch:.3f} ms at batch {HEAVY_BOUND_BATCH}; bound {bound * 1e3:.1f} ms",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        ports: dict[str, tuple[int, int]] = {}
        for server in args.servers:
            base, port, grpc_port = stack.enter_context(serving(server, model, name, work))
            check_answer(base, name, request_body(widths[0]), widths[-1])
            if grpc_port:
                check_grpc(grpc_port, grpc_body(name, widths[0])[5:], widths[-1])
            ports[server] = (port, grpc_port)
        for target in targets_for(name, ports):
            if target.server == "bare-starlette" and report["generator_ceiling"] is None:
                report["generator_ceiling"] = generator_ceiling(target, args)
            report["points"].append(search(target, bound, args))


def main() -> int:
    servers = sorted({server for server, _ in TARGETS})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each")
    parser.add_argument("--steps", type=int, default=6, help="at most this many steps per point")
    parser.add_argument("--resolution", type=float, default=0.1, help="stop when within 1+this")
    parser.add_argument("--attempts", type=int, default=2, help="tries of a failing rate")
    parser.add_argument(
        "--disturbed-retries", type=int, default=3, help="reruns of a step other work disturbed"
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=15, help="no more such reruns after this long"
    )
    parser.add_argument("--connections", type=int, default=256, help="REST connections at most")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--servers", nargs="+", default=servers, choices=servers)
    parser.add_argument("--quick", action="store_true", help="short steps, fewer of them")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the output file's points that this run does not measure (a rerun of some)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="default: bench/results/runtime_open_loop.json, or, with "
        "--quick, runtime_open_loop.quick.tmp beside it (not the committed figures)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.steps, args.resolution = 1.5, 0.5, 4, 0.2
        args.disturbed_retries = min(args.disturbed_retries, 1)
    if args.output is None:
        name = "runtime_open_loop.quick.tmp" if args.quick else "runtime_open_loop.json"
        args.output = RESULTS / name
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        sys.stderr.write("runtime_open_loop: needs two cores and taskset (util-linux)\n")
        return 2
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # the generator; servers are taskset to core 0
    # SIGTERM (timeout, make's interrupt) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    args.deadline = started + 60 * args.budget_minutes
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": {
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
            "generator": "this script: Poisson arrivals, latency from the intended send time; "
            "REST over HTTP/1.1 keep-alive (uvloop, httptools), gRPC over one grpc.aio channel",
            "max_connections_or_calls_in_flight": args.connections,
            "warmup_seconds": args.warmup,
            "measured_seconds_per_step": args.seconds,
            "max_steps_per_point": args.steps,
            "resolution": args.resolution,
            "attempts_per_failing_rate": args.attempts,
            "disturbed": f"a step during which other processes used over {OTHERS_LIMIT} of a "
            f"core (both cores counted) is rerun, up to {args.disturbed_retries} times within "
            f"{args.budget_minutes:g} min of the start, and flagged if it stays over",
            "closed_loop_probe": f"{PROBE_CONCURRENCY} in flight for {PROBE_SECONDS} s",
            "quick": args.quick,
        },
        "bounds": {
            "tiny": f"p99 < {TINY_BOUND_MS:g} ms",
            "heavy": f"p99 < {HEAVY_BOUND_FACTOR:g} x the batch compute time, which is raw "
            f"onnxruntime's p50 run time at batch {HEAVY_BOUND_BATCH} (one thread, core 0, "
            "bench/peers/raw_onnxruntime.py), measured in this run",
            "also": "no errors, nothing unanswered, send-lag p99 <= 1 ms (else generator-bound)",
        },
        "raw_onnxruntime": {},
        "generator_ceiling": None,
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="modelplane-open-loop-") as scratch:
        for name in args.models:
            measure_model(name, args, Path(scratch), report)
    report["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report["took_seconds"] = round(time.monotonic() - started, 1)
    if args.merge and args.output.exists():
        merge(report, json.loads(args.output.read_text()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


def merge(report: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Add an earlier run's points (and raw figures, generator ceiling) that this run did not
    measure, saying which and from when."""

    def key(point: dict[str, Any]) -> tuple[str, str, str]:
        return point["server"], point["model"], point["protocol"]

    measured = {key(point) for point in report["points"]}
    kept = [point for point in earlier["points"] if key(point) not in measured]
    for point in kept:
        point.setdefault("from_run_started_at", earlier.get("started_at", "unknown"))
    order = [(m, s, p) for m in MODELS for s, p in TARGETS]
    report["points"] = sorted(
        report["points"] + kept, key=lambda p: order.index((p["model"], p["server"], p["protocol"]))
    )
    for model, figures in earlier.get("raw_onnxruntime", {}).items():
        report["raw_onnxruntime"].setdefault(model, figures)
    if report["generator_ceiling"] is None:
        report["generator_ceiling"] = earlier.get("generator_ceiling")
    report["merged"] = {
        "earlier_run_started_at": earlier.get("started_at", "unknown"),
        "earlier_run_took_seconds": earlier.get("took_seconds"),
        "points_kept_from_it": [list(key(point)) for point in kept],
    }


def print_table(report: dict[str, Any]) -> None:
    print("\nhighest Poisson rate with p99 under the bound (latency from the intended send time)")
    print(
        f"{'model':5} {'bound':>8} {'server':14} {'protocol':11} {'rate/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'lag p99':>8} {'others':>6} {'probe/s':>8}  limited by"
    )
    for point in report["points"]:
        at = point["at_rate"] or {}
        print(
            f"{point['model']:5} {point['bound_ms']:6.1f}ms {point['server']:14} "
            f"{point['protocol']:11} {point['rate_per_s']:7.0f} {at.get('p50_ms', math.nan):7.2f} "
            f"{at.get('p99_ms', math.nan):7.2f} {at.get('send_lag_p99_ms', math.nan):8.3f} "
            f"{at.get('others_cpu', math.nan):6.2f} {point['closed_loop_probe_per_s']:8.0f}  "
            f"{point['limited_by']}"
        )
    disturbed = sum(s["disturbed"] for p in report["points"] for s in p["steps"])
    total = sum(len(p["steps"]) for p in report["points"])
    print(f"steps disturbed by other work (others > {OTHERS_LIMIT}): {disturbed} of {total}")
    ceiling = report["generator_ceiling"]
    if ceiling:
        print(
            f"\ngenerator: kept its schedule up to {ceiling['highest_rate_kept_per_s']:.0f}/s "
            f"against {ceiling['against']}; the next step: {ceiling['next_step_stopped_by']}; "
            f"{ceiling['closed_loop_client_cpu_us_per_answer']:.0f} us of its CPU per answer"
        )
    print(f"took {report['took_seconds']} s")
    print("\nREADME table (requests/s; p50 / p99 ms at that rate; X the closed-loop probe):")
    print(markdown_table(report))


SERVER_NAMES = {
    "modelplane": "modelplane",
    "bare-starlette": "bare Starlette (floor)",
    "kserve": "KServe",
    "mlserver": "MLServer",
}
PROTOCOL_NAMES = {"rest-json": "REST JSON", "rest-binary": "REST binary", "grpc": "gRPC"}


def markdown_table(report: dict[str, Any]) -> str:
    """The README's table: a row per server and protocol, the tiny and heavy model side by
    side; a rate whose lowest failing step was disturbed by other work is marked ``*``."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for point in report["points"]:
        at = point["at_rate"] or {}
        failing = point.get("lowest_failing") or {}
        mark = "*" if failing.get("disturbed") else ""
        row = cells.setdefault((point["server"], point["protocol"]), {})
        row[point["model"]] = (
            f"{point['rate_per_s']:,.0f}{mark} | {at.get('p50_ms', math.nan):.1f} / "
            f"{at.get('p99_ms', math.nan):.1f} | {point['closed_loop_probe_per_s']:,.0f}"
        )
    lines = [
        "| server | protocol | tiny: rate | p50 / p99 | X | heavy: rate | p50 / p99 | X |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (server, protocol), row in cells.items():
        name, kind = SERVER_NAMES.get(server, server), PROTOCOL_NAMES.get(protocol, protocol)
        missing = "- | - | -"
        lines.append(
            f"| {name} | {kind} | {row.get('tiny', missing)} | {row.get('heavy', missing)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
