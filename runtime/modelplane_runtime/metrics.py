"""Prometheus metrics, labelled by model; served on BentoML's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from modelplane_api import facts
from modelplane_runtime.errors import CLIENT_CLOSED

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

_REQUESTS = Counter(
    "modelplane_inference_requests",
    "Inference requests answered, by outcome (success or the error's HTTP status).",
    ["model", "outcome"],
)
_QUEUE = Histogram(
    "modelplane_queue_seconds",
    "Time a request waited for the compute lane.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
_COMPUTE = Histogram(
    "modelplane_compute_seconds",
    "onnxruntime time per batch.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
_BATCH = Histogram(
    "modelplane_batch_size", "Rows per onnxruntime run.", ["model"], buckets=_BATCH_BUCKETS
)
_PENDING = Gauge(
    facts.PENDING_REQUESTS_METRIC,  # the HPA's pendingRequests metric
    "Inference requests accepted and not yet answered: the autoscaling signal.",
    ["model"],
    multiprocess_mode="livesum",
)
_QUEUE_FULL = Counter(
    "modelplane_queue_full",
    "Inference requests refused with 503 because the batcher's queue was full.",
    ["model"],
)
_CONNECTIONS_REFUSED = Counter(
    "modelplane_connections_refused",
    "Client connections answered and closed before a request reached the application, by HTTP"
    " status (400 malformed, 408 headers too slow, 431 headers too large, 503 too many).",
    ["status"],
)
_MEMORY_REFUSED = Counter(
    "modelplane_memory_refused",
    "Inference requests refused with 503 because the request memory budget was in use.",
    ["model"],
)
_MEMORY_BUDGET = Gauge(
    "modelplane_request_memory_budget_bytes",
    "Memory request bodies may claim (what the memory limit leaves after start-up, less a "
    "margin); absent without a known limit.",
    ["model"],
    multiprocess_mode="max",
)
_INFO = Gauge(
    "modelplane_model_info",
    "The loaded model and the execution provider in use.",
    ["model", "execution_provider"],
    multiprocess_mode="max",
)


class RuntimeMetrics:
    """The metric children for one model, bound once instead of on every request."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.success = _REQUESTS.labels(model, "success")
        self.queue_seconds = _QUEUE.labels(model)
        self.compute_seconds = _COMPUTE.labels(model)
        self.batch_size = _BATCH.labels(model)
        self.pending = _PENDING.labels(model)
        self.queue_full = _QUEUE_FULL.labels(model)
        self.memory_refused = _MEMORY_REFUSED.labels(model)

    def failure(self, status: int) -> None:
        """Count an answer by its status; a client that left before its answer is
        ``client_closed``, not a status."""
        outcome = "client_closed" if status == CLIENT_CLOSED else str(status)
        _REQUESTS.labels(self.model, outcome).inc()

    def memory_budget(self, total: int) -> None:
        _MEMORY_BUDGET.labels(self.model).set(total)

    def loaded(self, provider: str) -> None:
        _INFO.labels(self.model, provider).set(1)


def connections_refused(status: int) -> None:
    _CONNECTIONS_REFUSED.labels(str(status)).inc()
