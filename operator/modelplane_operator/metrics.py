"""Prometheus metrics for reconciles, served by the operator on its metrics port."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("modelplane_operator_reconciles", "Reconciles by outcome.", ["outcome"])
RECONCILE_ERRORS = Counter(
    "modelplane_operator_reconcile_errors", "Reconciles that failed and will be retried."
)
RECONCILE_SECONDS = Histogram(
    "modelplane_operator_reconcile_seconds",
    "Time per reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# What `kubectl get md` says, for alerts that need no kube-state-metrics. The label is
# `namespace` as kube-state-metrics names it: the ServiceMonitor keeps it (honorLabels).
MODEL_DEPLOYMENT_READY = Gauge(
    "modelplane_model_deployment_ready",
    "1 while a ModelDeployment's Ready condition is True, else 0; reason is the condition's "
    "reason (FetchingModel, ModelFetchFailed, ...). One series per ModelDeployment.",
    ["namespace", "model", "reason"],
)
_READY_REASONS: dict[tuple[str, str], str] = {}


def observe_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Set the Ready gauge from a computed status, written or not: after a restart the
    operator writes nothing for an unchanged ModelDeployment, yet must export it again."""
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    if ready is None:
        return
    key, reason = (namespace, name), str(ready.get("reason", ""))
    before = _READY_REASONS.get(key)
    if before is not None and before != reason:
        MODEL_DEPLOYMENT_READY.remove(namespace, name, before)
    _READY_REASONS[key] = reason
    MODEL_DEPLOYMENT_READY.labels(namespace, name, reason).set(ready.get("status") == "True")


def forget_model_deployment(namespace: str, name: str) -> None:
    """A deleted ModelDeployment leaves /metrics (else it would alert as not ready forever)."""
    reason = _READY_REASONS.pop((namespace, name), None)
    if reason is not None:
        MODEL_DEPLOYMENT_READY.remove(namespace, name, reason)
