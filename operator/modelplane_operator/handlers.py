"""kopf handlers: decorators only. Every path ends in reconcile.reconcile().

No timers or daemons: kopf puts a finalizer on objects that have them, and a
finalizer would block deleting a ModelDeployment whenever the operator is down.

Start with ``kopf run -m modelplane_operator.handlers`` (never by file path:
operator/ must not shadow Python's own ``operator`` module).
"""

from __future__ import annotations

from typing import Any

import kopf

from modelplane_operator import names, wiring
from modelplane_operator.reconcile import RetryLater, SpecRejected

MD = (names.GROUP, names.VERSION, names.PLURAL)
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
}
RECONCILE = "reconcile"  # the handler id; kopf keys its retry state by it


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    wiring.configure(settings, memo, handler_ids=(RECONCILE, f"{RECONCILE}/spec"))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return wiring.login(**kwargs)


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    wiring.stop(memo)


# --- indexes: the watch cache reconcile reads instead of GETs --------------------------------


@kopf.index(*MD, when=wiring.watched)
def model_deployments(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): wiring.snapshot(body)}


@kopf.index(*CHILDREN["Deployment"], labels=OURS)
def deployments(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): wiring.snapshot(body)}


@kopf.index(*CHILDREN["Service"], labels=OURS)
def services(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): wiring.snapshot(body)}


@kopf.index(*CHILDREN["HorizontalPodAutoscaler"], labels=OURS)
def hpas(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): wiring.snapshot(body)}


@kopf.index(*CHILDREN["PodDisruptionBudget"], labels=OURS)
def pdbs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): wiring.snapshot(body)}


@kopf.index("", "v1", "pods", labels={names.LABEL_NAME: names.APP_NAME})
def pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels.get(names.LABEL_INSTANCE, "")): wiring.snapshot(body)}


# --- the ModelDeployment itself -------------------------------------------------------------


@kopf.on.create(*MD, id=RECONCILE, when=wiring.watched)
@kopf.on.update(*MD, id=RECONCILE, field="spec", when=wiring.watched)
@kopf.on.resume(*MD, id=RECONCILE, when=wiring.watched)
def reconcile_model_deployment(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    try:
        wiring.reconcile_body(body, memo, indexes)
    except SpecRejected as rejected:
        if rejected.newly:
            kopf.warn(body, reason=rejected.reason, message=str(rejected))
        raise kopf.PermanentError(str(rejected)) from None
    except RetryLater as later:
        raise kopf.TemporaryError(str(later), delay=later.delay) from None


# --- children and pods: status follows them, and drift is repaired ---------------------------


@kopf.on.event(*CHILDREN["Deployment"], labels=OURS)
@kopf.on.event(*CHILDREN["Service"], labels=OURS)
@kopf.on.event(*CHILDREN["HorizontalPodAutoscaler"], labels=OURS)
@kopf.on.event(*CHILDREN["PodDisruptionBudget"], labels=OURS)
@kopf.on.event("", "v1", "pods", labels={names.LABEL_NAME: names.APP_NAME})
def child_changed(event: kopf.RawEvent, memo: kopf.Memo, **indexes: Any) -> None:
    wiring.reconcile_owner(event, memo, indexes)
