"""Prometheus metrics, labelled by model; served on BentoML's /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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
_REQUEST_SECONDS = Histogram(
    facts.REQUEST_SECONDS_METRIC,
    "Time from an inference request's arrival to its answer (or refusal), per model: the "
    "latency canary analysis and the p99 alert read.",
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
_RUNS_TERMINATED = Counter(
    "modelplane_runs_terminated",
    "onnxruntime runs terminated because every request in their batch had passed its "
    "deadline (runtime.requestTimeoutSeconds).",
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
_ACCESS_REFUSED = Counter(
    "modelplane_access_refused",
    "Requests refused with 401 before any consumer was known, by reason (missing_key, "
    "malformed, unknown_key, expired_key).",
    ["model", "reason"],
)
_ACCESS_RELOADS = Counter(
    "modelplane_access_reloads",
    "Re-reads of the access file after it changed, by result (loaded, invalid, unreadable).",
    ["model", "result"],
)
_ACCESS_CONSUMERS = Gauge(
    "modelplane_access_consumers",
    "Consumers in the access file now in force.",
    ["model"],
    multiprocess_mode="max",
)
_INFO = Gauge(
    "modelplane_model_info",
    "The loaded model and the execution provider in use.",
    ["model", "execution_provider"],
    multiprocess_mode="max",
)


def failure_outcome(status: int) -> str:
    """A failed answer's outcome label: its status; a client that left before its answer
    is ``client_closed``, not a status."""
    return "client_closed" if status == CLIENT_CLOSED else str(status)


class RuntimeMetrics:
    """The metric children for one model, bound once instead of on every request."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.success = _REQUESTS.labels(model, "success")
        self.queue_seconds = _QUEUE.labels(model)
        self.compute_seconds = _COMPUTE.labels(model)
        self.batch_size = _BATCH.labels(model)
        self.request_seconds = _REQUEST_SECONDS.labels(model)
        self.pending = _PENDING.labels(model)
        self.queue_full = _QUEUE_FULL.labels(model)
        self.memory_refused = _MEMORY_REFUSED.labels(model)
        self.runs_terminated = _RUNS_TERMINATED.labels(model)

    def failure(self, status: int) -> None:
        _REQUESTS.labels(self.model, failure_outcome(status)).inc()

    def memory_budget(self, total: int) -> None:
        _MEMORY_BUDGET.labels(self.model).set(total)

    def loaded(self, provider: str) -> None:
        _INFO.labels(self.model, provider).set(1)


class ConsumerMeter:
    """One consumer's usage of one model, as plain numbers: five Prometheus counters per
    request (each takes a lock) cost a restricted model 2-3% of its throughput. Only the
    event loop writes them; :class:`_UsageCollector` reads them at scrape time."""

    __slots__ = (
        "compute_seconds",
        "consumer",
        "model",
        "outcomes",
        "refused_rows",
        "request_bytes",
        "response_bytes",
        "rows",
    )

    def __init__(self, model: str, consumer: str) -> None:
        self.model = model
        self.consumer = consumer
        self.outcomes: dict[str, int] = {}
        self.rows = 0
        self.refused_rows = 0
        self.compute_seconds = 0.0
        self.request_bytes = 0
        self.response_bytes = 0

    def outcome(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def record(
        self,
        outcome: str,
        rows: int,
        compute_seconds: float,
        request_bytes: int,
        response_bytes: int,
        *,
        ran: bool,
    ) -> None:
        """One inference request, answered (``success``) or not (a failure outcome). Its
        rows are billed only if they ran; those refused over a row limit are counted apart."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if ran:
            self.rows += rows
        elif outcome == "429":
            self.refused_rows += rows
        self.compute_seconds += compute_seconds
        self.request_bytes += request_bytes
        self.response_bytes += response_bytes


# The consumer label takes only names from the access file, never anything a client sent:
# its cardinality is bounded by the consumers. A consumer removed from the file loses its
# series (AccessMetrics.forget): Prometheus reads a series that comes back as a reset.
_USAGE_SERIES = (
    ("modelplane_consumer_rows", "Rows (the batch axis) inferred per consumer.", "rows"),
    (
        "modelplane_consumer_refused_rows",
        "Rows of requests refused with 429 over the consumer's row rate: not inferred, "
        "so not in modelplane_consumer_rows.",
        "refused_rows",
    ),
    (
        "modelplane_consumer_compute_seconds",
        "onnxruntime time per consumer (each batch's run time shared by its rows).",
        "compute_seconds",
    ),
    (
        "modelplane_consumer_request_bytes",
        "Inference request body bytes per consumer.",
        "request_bytes",
    ),
    (
        "modelplane_consumer_response_bytes",
        "Inference answer body bytes per consumer.",
        "response_bytes",
    ),
)


class _UsageCollector(Collector):
    def __init__(self) -> None:
        self.meters: dict[tuple[str, str], ConsumerMeter] = {}

    def collect(self) -> Iterator[Metric]:
        meters = list(self.meters.values())
        requests = CounterMetricFamily(
            "modelplane_consumer_requests",
            "Inference requests per consumer, by outcome (success or the error's HTTP status).",
            labels=["model", "consumer", "outcome"],
        )
        for meter in meters:
            for outcome, count in list(meter.outcomes.items()):
                requests.add_metric([meter.model, meter.consumer, outcome], count)
        yield requests
        for name, documentation, attribute in _USAGE_SERIES:
            family = CounterMetricFamily(name, documentation, labels=["model", "consumer"])
            for meter in meters:
                family.add_metric([meter.model, meter.consumer], getattr(meter, attribute))
            yield family


_USAGE = _UsageCollector()
REGISTRY.register(_USAGE)


class AccessMetrics:
    def __init__(self, model: str) -> None:
        self.model = model

    def meter(self, consumer: str) -> ConsumerMeter:
        return _USAGE.meters.setdefault((self.model, consumer), ConsumerMeter(self.model, consumer))

    def forget(self, consumers: Iterable[str]) -> None:
        """Consumers that left the access file: their series leave /metrics."""
        for consumer in consumers:
            _USAGE.meters.pop((self.model, consumer), None)

    def refused(self, reason: str) -> None:
        _ACCESS_REFUSED.labels(self.model, reason).inc()

    def reloaded(self, result: str) -> None:
        _ACCESS_RELOADS.labels(self.model, result).inc()

    def consumers(self, count: int) -> None:
        _ACCESS_CONSUMERS.labels(self.model).set(count)


_RENDERS = Counter(
    "modelplane_metrics_renders",
    "Times /metrics was rendered; scrapes within METRICS_MAX_AGE_SECONDS of a render get "
    "that render again.",
)
_RENDER_SECONDS = Counter(
    "modelplane_metrics_render_seconds",
    "Time spent rendering /metrics (on the event loop).",
)
# /metrics needs no key: without a bound, scrapers in a loop would render every series
# (per consumer and outcome) on the event loop as often as they ask.
METRICS_MAX_AGE_SECONDS = 1.0


class MetricsCache:
    """/metrics rendered at most once per METRICS_MAX_AGE_SECONDS, whoever asks."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        self._render = render
        self._body = b""
        self._rendered = -METRICS_MAX_AGE_SECONDS

    def body(self) -> tuple[bytes, float]:
        """The latest render, and its age in seconds."""
        now = time.monotonic()
        if now - self._rendered >= METRICS_MAX_AGE_SECONDS:
            _RENDERS.inc()
            self._body = self._render()
            self._rendered = time.monotonic()
            _RENDER_SECONDS.inc(self._rendered - now)
        return self._body, max(0.0, now - self._rendered)


def connections_refused(status: int) -> None:
    _CONNECTIONS_REFUSED.labels(str(status)).inc()
