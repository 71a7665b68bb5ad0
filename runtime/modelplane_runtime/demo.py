"""The serving half of ``make demo``: export, serve, ask, stop. No cluster, no downloads.

1. export a small torch classifier to ONNX (checked against torch),
2. serve it with this runtime on 127.0.0.1,
3. send one Open Inference Protocol request and print the answer,
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


def _call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    # Always http://127.0.0.1: the demo starts that server itself.
    request = urllib.request.Request(  # noqa: S310
        url, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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
    from modelplane_runtime.examples import tiny_classifier
    from modelplane_runtime.export import export_module

    with tempfile.TemporaryDirectory(prefix="modelplane-demo-") as folder:
        model = Path(folder) / "classifier.onnx"
        print("== 1. export a torch classifier (64 features -> 10 classes) to ONNX")
        report = export_module(tiny_classifier(), model, input_shape=(1, 64))
        print(f"   {model.name}: max abs difference to torch {report.max_abs_diff:.2g}")

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"== 2. serve it over the Open Inference Protocol at {base}")
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_ready(base, server)
            _, metadata = _call(base + "/v2/models/classifier")
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
            status, answer = _call(base + "/v2/models/classifier/infer", request)
            print(f"   HTTP {status}: {json.dumps(answer)[:400]}")
            scores = answer["outputs"][0]["data"]
            for row in range(2):
                logits = scores[row * 10 : (row + 1) * 10]
                print(f"   row {row}: predicted class {logits.index(max(logits))}")
        finally:
            print("== 4. stop the server (SIGTERM: not ready, drain, exit)")
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait(timeout=10)
            print(f"   exited with status {code}")
    return 0 if status == 200 and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
