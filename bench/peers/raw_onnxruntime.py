"""The limit: onnxruntime called in-process, no HTTP, one thread.

    python raw_onnxruntime.py MODEL.onnx SECONDS BATCH [BATCH ...]

Prints one JSON line per batch size: runs/s, rows/s, and per-run latency p50/p99.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

path, seconds = sys.argv[1], float(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feature = session.get_inputs()[0]
width = int(feature.shape[1])
rng = np.random.default_rng(0)

for batch in map(int, sys.argv[3:]):
    x = rng.standard_normal((batch, width), dtype=np.float32)
    for _ in range(5):
        session.run(None, {feature.name: x})
    latencies = []
    deadline = time.perf_counter() + seconds
    while (start := time.perf_counter()) < deadline:
        session.run(None, {feature.name: x})
        latencies.append(time.perf_counter() - start)
    runs = len(latencies) / seconds
    print(
        json.dumps(
            {
                "batch": batch,
                "runs_per_s": runs,
                "rows_per_s": runs * batch,
                "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            }
        ),
        flush=True,
    )
