"""The real runtime server as a subprocess on 127.0.0.1, started and stopped by tests."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from modelplane_api import facts

STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
# The kubelet's probes; and how long a test waits for slow work it probes around.
PROBE_PATHS = (facts.LIVE_PATH, facts.READY_PATH)
PROBED_WORK_TIMEOUT = 30.0


def run_runtime_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m modelplane_runtime ARGS`` to completion, output captured (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "modelplane_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
        # A server it starts listens for gRPC on a free port, not the default one.
        env={**os.environ, "MODELPLANE_GRPC_PORT": str(free_port()), **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RuntimeServer:
    """``python -m modelplane_runtime serve ...``; every wait bounded."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_dir: Path,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        while self.grpc_port == self.port:  # (the kernel may hand out a port again)
            self.grpc_port = free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"  # for grpc and tritonclient.grpc
        self.log_path = log_dir / f"runtime-{self.port}.log"
        environment = {
            **os.environ,
            "MODELPLANE_LOG_LEVEL": "INFO",
            "MODELPLANE_GRPC_PORT": str(self.grpc_port),
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelplane_runtime",
                "serve",
                *args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.session = requests.Session()
        # A GET on a pooled connection the server has just closed as idle (keep-alive can be
        # 1 s in these tests) is sent again, as browsers and urllib3 do for idempotent
        # requests; a POST never is, so what a test posts is answered once or fails.
        idempotent = Retry(total=2, connect=0, read=2, status=0, other=0, allowed_methods={"GET"})
        self.session.mount("http://", HTTPAdapter(max_retries=idempotent))

    def wait_live(self) -> RuntimeServer:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log()
                self.session.close()
                self._log.close()
                raise RuntimeError(f"runtime exited early:\n{output}")
            try:
                if self.session.get(self.url + "/v2/health/live", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"runtime not live after {STARTUP_TIMEOUT}s:\n{self.log()}")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=60, **kwargs)

    def metrics(self) -> str:
        """/metrics as rendered after this call began: the server renders it at most once a
        second (its age in a header), so a fresh one may take up to a second."""
        deadline = time.monotonic() + STOP_TIMEOUT
        # What happened before this call is then at least 2 ms old; an answer aged 0.000 was
        # rendered at most 0.5 ms before it was served, so after what happened. (An age no
        # greater than the round trip is no proof on a busy machine: the answer may have
        # waited for the client long after it was served.)
        time.sleep(0.002)
        while True:
            answer = self.get("/metrics")
            age = float(answer.headers.get("Modelplane-Metrics-Age", "0"))
            if age == 0.0 or time.monotonic() > deadline:
                return answer.text
            time.sleep(max(0.05, 1.0 - age))

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample from /metrics rendered after the call (0 when absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric_name, _, label_text = key.partition("{")
            found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if metric_name == name and found == wanted:
                return float(value)
        return 0.0

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def probes_answered_between(
        self,
        begun: str,
        ended: str,
        *,
        log_from: int,
        timeout: float = PROBED_WORK_TIMEOUT,
    ) -> dict[str, int]:
        """How many health probes (live, then ready, in turn) were answered 200 while the
        server was between two of its log lines, both written after ``log_from`` (a length
        of :meth:`log`): each probe sent once ``begun`` was written, and answered before
        ``ended`` was (the log is read again once the answer is in).

        A proof by order alone, however busy the machine: if the work between the two lines
        held the event loop, no probe could be answered between them, so none counts."""
        deadline = time.monotonic() + timeout
        counts = dict.fromkeys(PROBE_PATHS, 0)
        while begun not in self.log()[log_from:]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {begun!r} in the log after {timeout}s:\n{self.log()}")
            time.sleep(0.005)
        for path in itertools.cycle(PROBE_PATHS):
            if ended in self.log()[log_from:]:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {ended!r} in the log after {timeout}s:\n{self.log()}")
            answer = self.get(path)
            if ended in self.log()[log_from:]:
                return counts  # answered, but perhaps only once the work was done
            assert answer.status_code == 200, (path, answer.status_code, answer.text)
            counts[path] += 1
        raise AssertionError("unreachable")  # for mypy: cycle() never ends

    def terminate(self) -> int:
        """SIGTERM, then wait (bounded); kill if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
            raise
        finally:
            self.session.close()
            self._log.close()

    def __enter__(self) -> RuntimeServer:
        return self.wait_live()

    def __exit__(self, *exc: object) -> None:
        self.terminate()
