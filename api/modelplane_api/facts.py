"""Every fact the operator and the runtime both rely on, stated once.

The operator renders a pod from these and the runtime serves by them: a port
the probes call, a metric the HPA scales on, the path a model is fetched to.
Defaults and bounds of runtime settings live here too, so the spec, the
settings and the CRD cannot disagree.
"""

from __future__ import annotations

from typing import Literal

# --- the runtime process --------------------------------------------------------------------

RUNTIME_COMMAND = ("python", "-m", "modelplane_runtime")  # the images' ENTRYPOINT
RUNTIME_UID = 10001  # the images' user; the pods run as it
HTTP_PORT = 8080
# The Open Inference Protocol over gRPC (inference.GRPCInferenceService), beside REST in
# the same process; 8081, as KServe's model servers use it.
GRPC_PORT = 8081
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
MODEL_VERSION = "1"  # the only version a runtime serves
MODEL_DIR = "/mnt/models"
FETCHED_MODEL_FILE = "model.onnx"
# A runtime that cannot load its model exits, writing "ModelLoadFailed: <why>" here
# (the kubelet's default terminationMessagePath); the operator puts it into status.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MODEL_LOAD_FAILED = "ModelLoadFailed"
# Access control: the operator mounts a restricted model's access description (consumers'
# key digests, grants, limits; see modelplane_api.access) here; the runtime re-reads it
# within ACCESS_RELOAD_SECONDS of a change (the kubelet's atomic symlink swap).
ACCESS_DIR = "/etc/modelplane/access"
ACCESS_FILE = "access.json"
ACCESS_RELOAD_SECONDS = 1.0
SCRATCH_DIRS = (("tmp", "/tmp"), ("cache", "/home/modelplane/.cache"))  # noqa: S108

# The autoscaling signal: the runtime's gauge, the HPA's Pods metric.
PENDING_REQUESTS_METRIC = "modelplane_pending_requests"
# What canary analysis asks Prometheus about (exported names: counters end in _total).
INFERENCE_REQUESTS_METRIC = "modelplane_inference_requests"
REQUEST_SECONDS_METRIC = "modelplane_request_seconds"

# --- the model ------------------------------------------------------------------------------

URI_SCHEMES = ("s3", "gs", "http", "https", "pvc", "file")
FETCH_SCHEMES = frozenset({"file", "http", "https", "s3", "gs"})  # what `fetch` copies
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A model directory's integrity: this file (sha256sum's format) lists every file with
# its digest; the ModelDeployment's sha256 is the digest of this file.
MANIFEST_FILE = "SHA256SUMS"
# A model URI ending in "/" is a directory, one ending in these an archive: either is
# fetched into FETCHED_MODEL_DIR, where the runtime loads its graph (model.graph, or
# the only .onnx file) with the weights beside it.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
FETCHED_MODEL_DIR = "model"
# A model cache (spec.model.cache) is mounted here in the fetch container only; the fetch
# reports how it got the model as its termination message, "model cache <outcome>".
MODEL_CACHE_DIR = "/mnt/model-cache"
MODEL_CACHE_REPORT = "model cache "
# A pvc:// model with copyToPod: its claim is mounted here, read-only, in the fetch
# container only, which copies the model into MODEL_DIR (the serving container never
# sees the claim).
MODEL_SOURCE_DIR = "/mnt/model-source"
MAX_MODEL_BYTES = 1 << 40  # what a fetch may write, when no volume sizeLimit bounds it (1 TiB)
MAX_MODEL_FILES = 10_000  # entries (files and directories) in an archive or directory
# An archive unpacking to more than this many times its own size is refused as a bomb
# (deflate and gzip reach about 1000x on zeros; ONNX weights compress to about 1.1x).
MAX_COMPRESSION_RATIO = 100
# The operator's default sizeLimit of the emptyDir a fetched model lands in; the fetch's
# byte cap follows it (runtime.modelVolumeSizeLimit in the chart).
MODEL_VOLUME_SIZE_LIMIT = "100Gi"
# A download that stalls must not hang: no byte for FETCH_STALL_SECONDS ends an attempt;
# transient failures (a refused or reset connection, a stall, 408, 429, 5xx) are retried
# with backoff, resuming with Range where the server allows it, until FETCH_ATTEMPTS in a
# row made no progress or the whole fetch has run for FETCH_BUDGET_SECONDS. Then the fetch
# exits writing "FetchStalled: <the attempt and the last error>" as its termination
# message; while the kubelet runs it again, the status says "Retrying".
FETCH_STALL_SECONDS = 60
FETCH_BUDGET_SECONDS = 3 * 3600
FETCH_ATTEMPTS = 5
FETCH_STALLED = "FetchStalled"
FETCH_RETRYING = "Retrying"

# --- onnxruntime ----------------------------------------------------------------------------

ExecutionProvider = Literal[
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
]
GPU_PROVIDERS: frozenset[str] = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
CPU_PROVIDER: ExecutionProvider = "CPUExecutionProvider"
GraphOptimizationLevel = Literal["disabled", "basic", "extended", "all"]
# Custom operator libraries a model may load, by name (never a path from a spec): the
# package providing each is in the runtime images.
CustomOperators = Literal["onnxruntime-extensions"]

# --- defaults and bounds of the runtime's settings ------------------------------------------

MAX_BATCH_SIZE = 32
MAX_BATCH_SIZE_LIMIT = 4096
MAX_LATENCY_MS = 5
MAX_LATENCY_MS_LIMIT = 60_000
WARMUP_ITERATIONS = 3
WARMUP_ITERATIONS_LIMIT = 1000
WARMUP_SHAPES_LIMIT = 32
WARMUP_DIMENSION_LIMIT = 1_000_000
STARTUP_TIMEOUT_SECONDS_MIN = 10
STARTUP_TIMEOUT_SECONDS_LIMIT = 86_400
STARTUP_PROBE_PERIOD_SECONDS = 5
THREADS_LIMIT = 1024
REQUEST_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS_LIMIT = 3600
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_REQUEST_BYTES_MIN = 1024
MAX_REQUEST_BYTES_LIMIT = 2**31 - 1
# Requests that may wait for the compute lane, by default: this many full batches, and
# never fewer than MIN_QUEUED_REQUESTS (with batching off, a batch is one request).
QUEUE_BATCHES = 8
MIN_QUEUED_REQUESTS = 64
MAX_QUEUED_REQUESTS_LIMIT = 1_000_000
# What a client connection may cost before it is answered (see the README's "Limits").
HEADER_TIMEOUT_SECONDS = 10  # from connecting (or the end of the last request) to the headers' end
BODY_IDLE_SECONDS = 10  # longest silence while a request body is arriving
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 16 * 1024  # the request line and all headers together
MAX_HEADER_BYTES_LIMIT = 1024 * 1024
MAX_CONNECTIONS = 1000  # open client connections; beyond it new ones get 503 and are closed
MAX_CONNECTIONS_LIMIT = 1_000_000
CONNECTION_TIMEOUT_LIMIT = 3600

# --- other projects' defaults ---------------------------------------------------------------

# The KEDA HTTP add-on's Services as its Helm chart names them (SERVICE.NAMESPACE:PORT).
KEDA_HTTP_INTERCEPTOR = "keda-add-on-http-interceptor-proxy.keda:8080"
KEDA_HTTP_SCALER = "keda-add-on-http-external-scaler.keda:9090"
