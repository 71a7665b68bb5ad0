"""kopf handlers: decorators only. Every path ends in reconcile.reconcile().

No timers or daemons: kopf puts a finalizer on objects that have them, and a
finalizer would block deleting a ModelDeployment whenever the operator is down.
The kinds watched come from the registry (kinds.py); an index's id is the name
handlers receive it under.

Start with ``kopf run -m modelplane_operator.handlers`` (never by file path:
operator/ must not shadow Python's own ``operator`` module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from modelplane_api import names
from modelplane_operator import kopf_setup, kopf_toggles, triggers
from modelplane_operator.kinds import MODEL_CONSUMER, MODEL_DEPLOYMENT, PODS, WATCHED_CHILDREN, Kind
from modelplane_operator.reconcile import SpecRejected
from modelplane_operator.watch_cache import snapshot

# Applied at import, before kopf builds its processor; reported at start-up if not applied.
KOPF_PATCHES = {
    "start-up readiness wakes waiters only on a change": kopf_toggles.notify_only_on_change(),
    # Their handlers only queue (or find nothing to do): they need not wait for every listed
    # object to be indexed, holding theirs. The work queue waits instead.
    "queueing kinds' handlers run before all are indexed": kopf_toggles.handlers_before_indexed(
        [(kind.group, kind.plural) for kind in (MODEL_DEPLOYMENT, *WATCHED_CHILDREN, PODS)]
    ),
}

OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
RUNTIME_PODS = {names.LABEL_NAME: names.APP_NAME}
RECONCILE = "reconcile"  # the handler id; kopf keys its bookkeeping by it


def _resource(kind: Kind) -> tuple[str, str, str]:
    return (kind.group, kind.version, kind.plural)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    kopf_setup.configure(settings, memo, handler_ids=(RECONCILE, f"{RECONCILE}/spec"))
    kopf_setup.report_unapplied(KOPF_PATCHES)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf_setup.login(**kwargs)


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    kopf_setup.stop(memo)


# --- indexes: the watch cache reconcile reads instead of GETs --------------------------------


# Index functions are async (they only serialize): run on the event loop, not queued for
# a worker thread behind reconciles, holding their event meanwhile.
async def by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): snapshot(body)}


async def by_owner(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels.get(names.LABEL_INSTANCE, "")): snapshot(body)}


kopf.index(*_resource(MODEL_DEPLOYMENT), id=MODEL_DEPLOYMENT.index)(by_name)
for _child in WATCHED_CHILDREN:
    kopf.index(*_resource(_child), id=_child.index, labels=OURS)(by_name)
kopf.index(*_resource(PODS), id=PODS.index, labels=RUNTIME_PODS)(by_owner)


async def by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
    return {namespace: snapshot(body)}


kopf.index(*_resource(MODEL_CONSUMER), id=MODEL_CONSUMER.index)(by_namespace)


def _until_the_spec_changes(
    trigger: Callable[[kopf.Body, kopf.Memo, Mapping[str, Any]], None],
    body: kopf.Body,
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
) -> None:
    """A spec the operator cannot serve (its status and Warning event already written)
    stops kopf's retries of the spec handler: only a new spec can change the outcome."""
    try:
        trigger(body, memo, indexes)
    except SpecRejected as rejected:
        raise kopf.PermanentError(str(rejected)) from None


# --- the ModelDeployment itself -------------------------------------------------------------


@kopf.on.create(*_resource(MODEL_DEPLOYMENT), id=RECONCILE)
@kopf.on.update(*_resource(MODEL_DEPLOYMENT), id=RECONCILE, field="spec")
@kopf.on.resume(*_resource(MODEL_DEPLOYMENT), id=RECONCILE)
async def reconcile_model_deployment(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    triggers.on_model_deployment(body, memo, indexes)


@kopf.on.event(*_resource(MODEL_DEPLOYMENT), id="model-deployments-changed")
async def model_deployment_changed(event: kopf.RawEvent, memo: kopf.Memo, **indexes: Any) -> None:
    await triggers.on_model_deployment_event(event, memo, indexes)


# --- ModelConsumers: their keys, and the access descriptions of the models they call ---------


@kopf.on.create(*_resource(MODEL_CONSUMER), id=RECONCILE)
@kopf.on.update(*_resource(MODEL_CONSUMER), id=RECONCILE, field="spec")
@kopf.on.resume(*_resource(MODEL_CONSUMER), id=RECONCILE)
def reconcile_model_consumer(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    _until_the_spec_changes(triggers.on_model_consumer, body, memo, indexes)


@kopf.on.event(*_resource(MODEL_CONSUMER), id="model-consumers-changed")
def model_consumer_changed(event: kopf.RawEvent, memo: kopf.Memo, **indexes: Any) -> None:
    triggers.on_consumer_event(event, memo, indexes)


# --- children and pods: status follows them, and drift is repaired ---------------------------


async def child_changed(event: kopf.RawEvent, memo: kopf.Memo, **indexes: Any) -> None:
    await triggers.on_child_event(event, memo, indexes)


for _child in WATCHED_CHILDREN:
    kopf.on.event(*_resource(_child), id=f"{_child.index}-changed", labels=OURS)(child_changed)
kopf.on.event(*_resource(PODS), id="pods-changed", labels=RUNTIME_PODS)(child_changed)
