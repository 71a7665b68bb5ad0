"""The serving half of ``make demo``: export, serve, ask, stop. No cluster, no downloads.

1. export a small torch classifier to ONNX (checked against torch),
2. serve it with this runtime on 127.0.0.1, only to one consumer with a key,
3. send one Open Inference Protocol request without the key (refused) and one
   with it, print the answer and the consumer's usage counters,
4. stop the server with SIGTERM, as Kubernetes would.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from modelplane_api import facts

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _call(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    # Always http://127.0.0.1: the demo starts that server itself.
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _usage(base: str) -> list[str]:
    """The consumer's lines of /metrics (public: Prometheus needs no key)."""
    with urllib.request.urlopen(base + facts.METRICS_PATH, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith("modelplane_consumer_")
        and "_total{" in line
        and 'consumer="demo-app"' in line
    ]


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the runtime exited during start-up; see its log above")
        try:
            if _call(base + facts.READY_PATH)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the runtime was not ready within {STARTUP_TIMEOUT:.0f}s")


def main() -> int:
    from modelplane_api.access import fingerprint, key_digest, new_key
    from modelplane_runtime.examples import tiny_classifier
    from modelplane_runtime.export import export_module

    with tempfile.TemporaryDirectory(prefix="modelplane-demo-") as folder:
        model = Path(folder) / "classifier.onnx"
        print("== 1. export a torch classifier (64 features -> 10 classes) to ONNX")
        report = export_module(tiny_classifier(), model, input_shape=(1, 64))
        print(f"   {model.name}: max abs difference to torch {report.max_abs_diff:.2g}")

        key = new_key()
        access = Path(folder) / "access.json"
        grant: dict[str, Any] = {
            "name": "demo-app",
            "models": ["classifier"],
            "keys": [{"sha256": key_digest(key)}],
            "limits": {"requestsPerSecond": 20, "burst": 5},
        }
        access.write_text(json.dumps({"consumers": [grant]}))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"== 2. serve it over the Open Inference Protocol at {base}")
        print(f"   only to consumer demo-app ({fingerprint(key_digest(key))}), 20 requests/s")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelplane_runtime",
                "serve",
                "--model",
                str(model),
                "--name",
                "classifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--access",
                str(access),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_ready(base, server)
            _, metadata = _call(base + "/v2/models/classifier", key=key)
            print(f"   inputs {metadata['inputs']}  outputs {metadata['outputs']}")
            print(f"   running on {metadata['parameters']['execution_provider']}")

            print("== 3. POST /v2/models/classifier/infer with two rows")
            features = [[round(0.01 * (i + 8 * row), 2) for i in range(64)] for row in range(2)]
            request = {
                "id": "demo-1",
                "inputs": [
                    {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": features}
                ],
            }
            refused, why = _call(base + "/v2/models/classifier/infer", request)
            print(f"   without a key: HTTP {refused}: {json.dumps(why)}")
            status, answer = _call(base + "/v2/models/classifier/infer", request, key=key)
            print(f"   with demo-app's key: HTTP {status}: {json.dumps(answer)[:400]}")
            scores = answer["outputs"][0]["data"]
            for row in range(2):
                logits = scores[row * 10 : (row + 1) * 10]
                print(f"   row {row}: predicted class {logits.index(max(logits))}")
            print("   demo-app's usage on /metrics:")
            for line in _usage(base):
                print(f"     {line}")
        finally:
            print("== 4. stop the server (SIGTERM: not ready, drain, exit)")
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait(timeout=10)
            print(f"   exited with status {code}")
    return 0 if refused == 401 and status == 200 and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
