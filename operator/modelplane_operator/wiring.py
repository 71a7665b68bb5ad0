"""What connects kopf to the reconcile: settings, the watch cache, locks, events.

handlers.py holds only decorators; each calls one function here.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelplane_operator import names
from modelplane_operator.applier import Outcome
from modelplane_operator.config import OperatorConfig
from modelplane_operator.freshness import RecentWrites
from modelplane_operator.handled import ObservedGenerationDiffBase, RetryAnnotations
from modelplane_operator.kube import KubeApi, load_client
from modelplane_operator.reconcile import ClusterView, RetryLater, SpecRejected, reconcile

log = logging.getLogger("modelplane.operator")
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
INDEX_OF_KIND = {
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "hpas",
    "PodDisruptionBudget": "pdbs",
}
Obj = dict[str, Any]


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, handler_ids: Iterable[str]) -> None:
    """The one place kopf is configured; typed config and the API client go into memo."""
    config = OperatorConfig()
    api = KubeApi(load_client())
    # kopf serves only the resources it finds at start (scanning is off, see below), so
    # wait here for the CRD rather than start without it.
    if not api.serves(names.KIND):
        api.client.close()
        raise kopf.TemporaryError(
            f"the {names.CRD_NAME} CRD is not installed; apply "
            "manifests/crds/modelplane.io_modeldeployments.yaml (checking again in 10s)",
            delay=10,
        )
    if config.log_format == "json":
        kopf.configure(log_format=kopf.LogFormat.JSON)
    settings.persistence.finalizer = f"{names.GROUP}/finalizer"
    progress = RetryAnnotations(prefix=names.GROUP)
    settings.persistence.progress_storage = progress
    memo.handled = ObservedGenerationDiffBase(progress, handler_ids)
    settings.persistence.diffbase_storage = memo.handled
    settings.posting.level = logging.WARNING  # Events only for what a user must act on
    settings.peering.standalone = True  # one replica, Recreate strategy
    # No watching of Namespaces and CRDs: it would need cluster-wide list/watch rights
    # that a namespaced install must not have, and the operator's kinds are fixed.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    memo.config = config
    memo.api = api
    memo.locks = _Locks()
    memo.retries = _Retries()
    memo.written = {}  # (namespace, name) -> the status this operator last wrote
    memo.recent = RecentWrites()  # children this operator wrote, until the cache has them
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address)


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig (read now, not at import)."""
    found: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return found or kopf.login_with_kubeconfig(**kwargs)


def stop(memo: kopf.Memo) -> None:
    retries = getattr(memo, "retries", None)
    if retries is not None:
        retries.cancel_all()
    api = getattr(memo, "api", None)
    if api is not None:
        api.client.close()


def watched(namespace: str | None, memo: kopf.Memo, **_: Any) -> bool:
    config: OperatorConfig | None = getattr(memo, "config", None)
    return config is None or config.watches(namespace or "")


def snapshot(body: kopf.Body) -> bytes:
    """A watched object for an index, as compact JSON.

    A parsed Deployment costs tens of KiB of Python objects and its JSON a few;
    the cache holds five objects per ModelDeployment, so it keeps bytes and a
    reconcile parses the few it reads.
    """
    return json.dumps(dict(body), separators=(",", ":")).encode()


class _Locks:
    """One lock per ModelDeployment: its handlers, timer and child events never overlap."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def __call__(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def drop(self, key: tuple[str, str]) -> None:
        with self._guard:
            self._locks.pop(key, None)


class _Retries:
    """Retries for reconciles started by child events, which kopf itself does not retry."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._timers: dict[tuple[str, str], tuple[int, threading.Timer]] = {}

    def schedule(self, key: tuple[str, str], action: Any) -> None:
        with self._guard:
            attempt, previous = self._timers.get(key, (0, None))
            if previous is not None:
                previous.cancel()
            if attempt >= len(RETRY_DELAYS):
                log.error("giving up on %s/%s after %d retries", *key, attempt)
                self._timers.pop(key, None)
                return
            timer = threading.Timer(RETRY_DELAYS[attempt], action)
            timer.daemon = True
            self._timers[key] = (attempt + 1, timer)
            timer.start()

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._guard:
            attempt = self._timers.pop(key, None)
        if attempt is not None:
            attempt[1].cancel()

    def cancel_all(self) -> None:
        with self._guard:
            for _, timer in self._timers.values():
                timer.cancel()
            self._timers.clear()


def _copy(store: Iterable[bytes] | None) -> list[bytes]:
    """The entries of a kopf index store, read from a handler's thread.

    kopf updates its indexes on the event loop while sync handlers run in worker
    threads, so iterating a store can meet a concurrent change ("dictionary changed
    size during iteration", seen on a real API server); the copy is simply retried.
    """
    if store is None:
        return []
    for _ in range(100):
        try:
            return list(store)
        except RuntimeError:
            continue
    return list(store)


def _first(store: Iterable[bytes] | None) -> Obj | None:
    found = _copy(store)
    return _parse(found[0]) if found else None


def _parse(snapshot: bytes) -> Obj:
    parsed: Obj = json.loads(snapshot)
    return parsed


# An event's own object, fresher than the index: (kind, namespace, name), the object
# (None when deleted), and the deleted object itself.
Override = tuple[tuple[str, str, str], Obj | None, Obj | None]


def _view(
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    override: Override | None = None,
) -> ClusterView:
    api: KubeApi = memo.api
    recent: RecentWrites = memo.recent

    def cached(kind: str, namespace: str, name: str) -> Obj | None:
        key = (kind, namespace, name)
        if override is not None and override[0] == key:
            return recent.fresher(key, override[1], tombstone=override[2])
        return recent.fresher(key, _first(indexes[INDEX_OF_KIND[kind]].get((namespace, name))))

    def child(kind: str, namespace: str, name: str) -> Obj | None:
        found = cached(kind, namespace, name)
        if found is None and not (override is not None and override[0] == (kind, namespace, name)):
            return api.get(kind, namespace, name)
        return found

    def pods(namespace: str, name: str) -> Sequence[Obj]:
        return [_parse(pod) for pod in _copy(indexes["pods"].get((namespace, name)))]

    return ClusterView(child=child, cached=cached, pods=pods)


def reconcile_body(
    body: Mapping[str, Any],
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    override: Override | None = None,
) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with memo.locks(key):
        current = dict(body)
        # Our own last status write may be newer than the watch event we were given.
        written = memo.written.get(key)
        if written is not None and written[0] == body["metadata"].get("uid"):
            current["status"] = written[1]

        def remember(status: Obj) -> None:
            memo.written[key] = (body["metadata"].get("uid"), status)

        result = reconcile(
            current,
            memo.api,
            memo.config,
            _view(memo, indexes, override),
            on_status_written=remember,
        )
        recent: RecentWrites = memo.recent
        for child in result.children:
            where = (child.kind, key[0], child.name)
            if child.outcome is Outcome.DELETED and child.live is not None:
                recent.deleted(where, child.live)
            elif child.wrote and child.live:
                recent.applied(where, child.live)


def forget(key: tuple[str, str], memo: kopf.Memo) -> None:
    """A ModelDeployment is gone: drop what the operator kept about it."""
    memo.written.pop(key, None)
    memo.recent.forget(*key)
    memo.handled.forget(key)
    memo.retries.succeeded(key)
    memo.locks.drop(key)


def reconcile_owner(event: kopf.RawEvent, memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """A child or pod changed: reconcile its ModelDeployment (status, and drift repair)."""
    obj = event["object"]
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace", "")
    owner = meta.get("labels", {}).get(names.LABEL_INSTANCE)
    if not owner or not watched(namespace, memo):
        return
    kind = obj.get("kind", "")
    override = None
    if kind in INDEX_OF_KIND:
        # The event is fresher than the index: a deleted child is gone even if still indexed.
        deleted = event["type"] == "DELETED"
        override = (
            (kind, namespace, meta.get("name", "")),
            None if deleted else copy.deepcopy(dict(obj)),
            dict(obj) if deleted else None,
        )
    _reconcile_from_event(memo, indexes, (namespace, owner), override, kind)


def _reconcile_from_event(
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    key: tuple[str, str],
    override: Override | None,
    kind: str,
) -> None:
    body = _first(indexes["model_deployments"].get(key))
    if body is None or body["metadata"].get("deletionTimestamp"):
        forget(key, memo)  # its children are being collected: the ModelDeployment is gone
        return
    try:
        reconcile_body(body, memo, indexes, override)
    except SpecRejected:
        memo.retries.succeeded(key)  # the ModelDeployment's own handlers report this
    except RetryLater as exc:
        log.info("reconcile of %s/%s after a %s change will be retried: %s", *key, kind, exc)
        memo.retries.schedule(key, lambda: _reconcile_from_event(memo, indexes, key, None, kind))
    else:
        memo.retries.succeeded(key)
