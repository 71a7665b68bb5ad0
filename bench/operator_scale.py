"""How the operator's cost grows with its work, against the test API emulator or a
real kube-apiserver (``--target real``: etcd and kube-apiserver from the envtest
binaries, see tests/modelplane_testkit/control_plane.py; writes counted from the
API server's audit log).

For N ModelDeployments (default 10, 100, 500), with a fresh API server and a fresh
``kopf run -m modelplane_operator.handlers`` process each time:

- seconds from creating N ModelDeployments to all of them having their
  children applied and their status written;
- mutating API requests per ModelDeployment on create, by kind;
- mutating API requests on an operator restart with nothing changed, the seconds
  until the restarted operator has resumed all N, and its peak resident memory
  on the way (kopf lists every watched object at start-up);
- the operator's resident memory once all N are reconciled.

Each N runs ``--rounds`` times (default 3) and the median round is reported
with the spread: resident memory on this shared 2-core machine moves by 20%
between identical runs.

Prints a table and writes bench/results/operator_scale.json. Run: make bench-operator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from modelplane_testkit.control_plane import (  # noqa: E402
    MUTATING_VERBS,
    ApiServer,
    LocalControlPlane,
    find_assets,
)
from modelplane_testkit.kube_emulator import Mutation  # noqa: E402
from modelplane_testkit.operator_harness import (  # noqa: E402
    OPERATOR_ARGS,
    Cluster,
    start_emulator,
    write_kubeconfig,
)
from modelplane_testkit.real_cluster import RealCluster  # noqa: E402
from modelplane_testkit.runtime_server import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "operator_scale.json"
REAL_RESULTS = REPO / "bench" / "results" / "operator_scale_real.json"
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")  # kopf's aiohttp, the kubernetes client
NAMESPACE = "bench"
TIMEOUT = 300.0


def _model_deployment(index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": f"s3://models/m{index}/model.onnx"}}
    if index % 3 == 1:
        spec["autoscaling"] = {"minReplicas": 2, "maxReplicas": 6}
    if index % 3 == 2:
        spec["resources"] = {"gpu": {"count": 1}}
        spec["replicas"] = 2
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{index:04d}", "namespace": NAMESPACE},
        "spec": spec,
    }


def _kind(mutation: Mutation) -> str:
    path = mutation.path
    if path.endswith("/status"):
        return "status write"
    if "/events" in path:
        return "event"
    if "/modeldeployments" in path:
        return "ModelDeployment metadata (kopf)"
    if mutation.method == "PATCH" and mutation.manager == "modelplane-operator":
        return "child apply"
    return f"{mutation.method} other"


def _audit_kind(event: dict[str, Any]) -> str:
    ref = event.get("objectRef", {})
    if ref.get("subresource") == "status":
        return "status write"
    if ref.get("resource") == "events":
        return "event"
    if ref.get("resource") == "modeldeployments":
        return "ModelDeployment metadata (kopf)"
    if event.get("verb") == "patch":
        return "child apply"
    return f"{event.get('verb')} other"


class Operator:
    def __init__(self, url: str, folder: Path, kubeconfig: Path | None = None) -> None:
        kubeconfig = kubeconfig or write_kubeconfig(folder / "kubeconfig", url)
        self.metrics = free_port()
        self.log = (folder / "operator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kopf", *OPERATOR_ARGS],
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "MODELPLANE_OPERATOR_METRICS_PORT": str(self.metrics),
                "MODELPLANE_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )

    def reconciles(self, outcome: str) -> float:
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5).text
        except requests.RequestException:  # not up yet, or too busy to answer in time
            return 0.0
        for line in text.splitlines():
            if line.startswith(f'modelplane_operator_reconciles_total{{outcome="{outcome}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def _reconciled(cluster: Cluster, count: int) -> bool:
    statuses = [md.get("status", {}) for md in cluster.list("modeldeployments")]
    done = sum(1 for status in statuses if status.get("observedGeneration") == 1)
    return done == count and len(cluster.list("services")) == count


def _wait(check: Any, what: str, count: int = 0) -> None:
    """Poll ``check``; at thousands of ModelDeployments each poll lists them all, so polls
    are spaced out and the deadline grows with the count."""
    deadline = time.monotonic() + max(TIMEOUT, 0.2 * count)
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25 if count < 1000 else 2.0)


def _resume(restarted: Operator, count: int) -> tuple[float, int]:
    """Seconds until a restarted operator has resumed all ``count`` ModelDeployments,
    and its peak resident memory, sampled at each poll, on the way."""
    start = time.perf_counter()
    peak = 0

    def resumed() -> bool:
        nonlocal peak
        peak = max(peak, restarted.rss())
        return restarted.reconciles("unchanged") >= count

    _wait(resumed, "the resume reconciles", count)
    return time.perf_counter() - start, peak


def _row(  # noqa: PLR0917 - one measurement's numbers
    count: int,
    elapsed: float,
    by_kind: Counter[str],
    restart: tuple[int, float, int],
    rss: int,
    baseline: int,
) -> dict[str, Any]:
    """One measurement: time, writes per ModelDeployment (by kind), restart writes, time
    and peak memory, memory."""
    restart_writes, resume_seconds, resume_peak = restart
    return {
        "model_deployments": count,
        "seconds_to_reconcile_all": round(elapsed, 2),
        "writes_per_model_deployment": round(sum(by_kind.values()) / count, 2),
        "writes_by_kind_per_model_deployment": {
            k: round(v / count, 2) for k, v in sorted(by_kind.items())
        },
        "writes_on_restart": restart_writes,
        "seconds_to_resume_all": round(resume_seconds, 2),
        "resume_peak_rss_mib": round(resume_peak / 2**20, 1),
        "operator_rss_mib": round(rss / 2**20, 1),
        "operator_rss_baseline_mib": round(baseline / 2**20, 1),
    }


def _operator_writes(server: ApiServer, since: int) -> list[dict[str, Any]]:
    return [
        e
        for e in server.audit(since)
        if e.get("verb") in MUTATING_VERBS
        and str(e.get("userAgent", "")).startswith(OPERATOR_AGENTS)
    ]


def measure_real(count: int, assets: Path) -> dict[str, Any]:
    """The same measurement against kube-apiserver (no controllers: the operator alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        plane = LocalControlPlane(assets, Path(tmp) / "plane", controllers=False)
        server = plane.start()
        try:
            cluster = RealCluster(server)
            server.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crds"))
            server.wait_established("modeldeployments.modelplane.io")
            cluster.namespace(NAMESPACE)

            def reconciled() -> bool:
                items = cluster.list("modeldeployments", NAMESPACE)
                done = sum(1 for md in items if md.get("status", {}).get("observedGeneration") == 1)
                return done == count and len(cluster.list("services", NAMESPACE)) == count

            operator = Operator(server.server, Path(tmp), server.kubeconfig)
            try:
                _wait(lambda: operator.rss() > 0 and operator.reconciles("changed") >= 0, "start")
                time.sleep(3)
                baseline_rss = operator.rss()
                mark = server.audit_mark()
                start = time.perf_counter()
                for index in range(count):
                    cluster.create("modeldeployments", _model_deployment(index))
                _wait(reconciled, "all reconciled", count)
                elapsed = time.perf_counter() - start
                time.sleep(3)
                writes = _operator_writes(server, mark)
                rss = operator.rss()
            finally:
                operator.stop()
            mark = server.audit_mark()
            restarted = Operator(server.server, Path(tmp), server.kubeconfig)
            try:
                resume_seconds, resume_peak = _resume(restarted, count)
                time.sleep(2)
            finally:
                restarted.stop()
            restart_writes = len(_operator_writes(server, mark))
        finally:
            plane.stop()
    by_kind = Counter(_audit_kind(e) for e in writes)
    restart = (restart_writes, resume_seconds, resume_peak)
    return _row(count, elapsed, by_kind, restart, rss, baseline_rss)


def measure(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, start_emulator() as emulator:
        cluster = Cluster(emulator)
        operator = Operator(emulator.url, Path(tmp))
        try:
            _wait(lambda: operator.reconciles("changed") >= 0 and operator.rss() > 0, "start")
            time.sleep(2)  # let kopf list and watch before the clock starts
            baseline_rss = operator.rss()
            start = time.perf_counter()
            for index in range(count):
                cluster.create("modeldeployments", _model_deployment(index))
            _wait(lambda: _reconciled(cluster, count), "all reconciled", count)
            elapsed = time.perf_counter() - start
            time.sleep(3)  # late writes (if any) count against the operator; memory settles
            mutations = [
                m
                for m in emulator.emulator.mutations
                if not (m.method == "POST" and "/modeldeployments" in m.path)
            ]
            rss = operator.rss()
        finally:
            operator.stop()
        by_kind = Counter(_kind(m) for m in mutations)

        before = len(emulator.emulator.mutations)
        restarted = Operator(emulator.url, Path(tmp))
        try:
            resume_seconds, resume_peak = _resume(restarted, count)
            time.sleep(2)
        finally:
            restarted.stop()
        restart = (len(emulator.emulator.mutations) - before, resume_seconds, resume_peak)
    return _row(count, elapsed, by_kind, restart, rss, baseline_rss)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several rounds at the same N: the median round by memory, plus the spread."""
    by_rss = sorted(rounds, key=lambda row: row["operator_rss_mib"])
    row = dict(by_rss[len(by_rss) // 2])
    row["operator_rss_mib_range"] = [by_rss[0]["operator_rss_mib"], by_rss[-1]["operator_rss_mib"]]
    row["seconds_range"] = [
        min(r["seconds_to_reconcile_all"] for r in rounds),
        max(r["seconds_to_reconcile_all"] for r in rounds),
    ]
    row["rounds"] = len(rounds)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="10,100,500")
    parser.add_argument(
        "--target",
        choices=("emulator", "real"),
        default="emulator",
        help="real: kube-apiserver from the envtest binaries (make e2e explains where)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh runs per N; the median is reported"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    counts = [int(n) for n in args.counts.split(",")]
    run = measure
    results = RESULTS
    if args.target == "real":
        assets = find_assets()
        if assets is None:
            parser.error("--target real needs the envtest binaries (see `make e2e`)")
        run, results = (lambda count: measure_real(count, assets)), REAL_RESULTS
    # Rounds interleave the counts, so slow spells on a shared machine spread over all N.
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            rounds[n].append(run(n))
    rows = [median_of(rounds[n]) for n in counts]
    first, last = rows[0], rows[-1]
    growth = (
        (last["operator_rss_mib"] - first["operator_rss_mib"])
        * 1024
        / max(1, last["model_deployments"] - first["model_deployments"])
    )
    print(
        f"{'N':>5} {'seconds':>8} {'writes/MD':>10} {'restart writes':>15} {'RSS MiB':>8}"
        f" {'RSS range':>13} {'resume s':>9} {'resume peak MiB':>16}"
    )
    for row in rows:
        low, high = row["operator_rss_mib_range"]
        print(
            f"{row['model_deployments']:>5} {row['seconds_to_reconcile_all']:>8} "
            f"{row['writes_per_model_deployment']:>10} {row['writes_on_restart']:>15} "
            f"{row['operator_rss_mib']:>8} {f'{low}-{high}':>13} "
            f"{row['seconds_to_resume_all']:>9} {row['resume_peak_rss_mib']:>16}"
        )
    print("writes per ModelDeployment by kind (largest N):")
    for kind, value in last["writes_by_kind_per_model_deployment"].items():
        print(f"    {kind:<34} {value}")
    print(f"memory growth: {growth:.1f} KiB per ModelDeployment")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "target": args.target,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "rows": rows,
                "rss_growth_kib_per_model_deployment": round(growth, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {results.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
