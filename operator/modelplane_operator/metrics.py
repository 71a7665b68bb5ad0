"""Prometheus metrics for reconciles, served by the operator on its metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter("modelplane_operator_reconciles", "Reconciles by outcome.", ["outcome"])
RECONCILE_ERRORS = Counter(
    "modelplane_operator_reconcile_errors", "Reconciles that failed and will be retried."
)
RECONCILE_SECONDS = Histogram(
    "modelplane_operator_reconcile_seconds",
    "Time per reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
