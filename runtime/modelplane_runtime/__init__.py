"""modelplane runtime: serves ONNX models over the Open Inference Protocol."""

import os
from importlib.metadata import PackageNotFoundError, version

# Before anything imports onnxruntime: otherwise it writes a device id and a
# telemetry queue under ~/.cache, which is read-only in the pods we render.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    __version__ = version("modelplane")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
