"""The watch cache reconcile reads instead of GETs: kopf indexes of compact JSON.

A parsed Deployment costs tens of KiB of Python objects and its JSON a few;
the cache holds several objects per ModelDeployment, so it keeps bytes and a
reconcile parses the few it reads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kopf

from modelplane_api.spec import InvalidSpecError, parse_model_deployment
from modelplane_operator.applier import ChildResult, Outcome
from modelplane_operator.freshness import RecentWrites
from modelplane_operator.kinds import BY_KIND, MODEL_CONSUMER, MODEL_DEPLOYMENT, PODS
from modelplane_operator.kube import KubeApi
from modelplane_operator.reconcile import ClusterView, resource_fields

Obj = dict[str, Any]
# An event's own object, fresher than the index: (kind, namespace, name), the object
# (None when deleted), and the deleted object itself.
ChildKey = tuple[str, str, str]  # kind, namespace, name
# A child as its latest watch event showed it, fresher than the cache: (the object, or None
# when the event said it was deleted; the deleted object, or None).
Seen = tuple[Obj | None, Obj | None]


class PendingEvents:
    """Children's events waiting for their owner's queued reconcile, the newest per child:
    added on the event loop, taken by the reconcile on its thread."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._by_owner: dict[tuple[str, str], dict[ChildKey, Seen]] = {}

    def add(self, owner: tuple[str, str], child: ChildKey, seen: Seen) -> None:
        with self._guard:
            self._by_owner.setdefault(owner, {})[child] = seen

    def take(self, owner: tuple[str, str]) -> dict[ChildKey, Seen]:
        with self._guard:
            return self._by_owner.pop(owner, {})


def snapshot(body: kopf.Body) -> bytes:
    return json.dumps(dict(body), separators=(",", ":")).encode()


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


def _parse(entry: bytes) -> Obj:
    parsed: Obj = json.loads(entry)
    return parsed


def first(store: Iterable[bytes] | None) -> Obj | None:
    found = _copy(store)
    return _parse(found[0]) if found else None


def model_deployment(indexes: Mapping[str, Any], key: tuple[str, str]) -> Obj | None:
    return first(indexes[MODEL_DEPLOYMENT.index].get(key))


def model_names(indexes: Mapping[str, Any], namespace: str) -> list[str]:
    """The ModelDeployments of a namespace, by name."""
    return sorted(name for ns, name in list(indexes[MODEL_DEPLOYMENT.index]) if ns == namespace)


def models_by_access(indexes: Mapping[str, Any], namespace: str) -> dict[str, bool]:
    """The ModelDeployments of a namespace: name -> restricted (an invalid one counts as
    restricted: it serves nobody)."""
    found: dict[str, bool] = {}
    for name in model_names(indexes, namespace):
        body = model_deployment(indexes, (namespace, name))
        if body is None:
            continue
        try:
            md = parse_model_deployment(resource_fields(body))
        except InvalidSpecError:
            found[name] = True
            continue
        found[name] = md.spec.restricted
    return found


def consumers_in(indexes: Mapping[str, Any], namespace: str, gone: str | None = None) -> list[Obj]:
    """The ModelConsumers of a namespace (indexed by namespace), less one just deleted."""
    found = [_parse(entry) for entry in _copy(indexes[MODEL_CONSUMER.index].get(namespace))]
    return [c for c in found if c["metadata"]["name"] != gone]


def model_consumer(indexes: Mapping[str, Any], key: tuple[str, str]) -> Obj | None:
    namespace, name = key
    return next(
        (c for c in consumers_in(indexes, namespace) if c["metadata"]["name"] == name), None
    )


def cluster_view(
    api: KubeApi,
    recent: RecentWrites,
    indexes: Mapping[str, Any],
    events: Mapping[ChildKey, Seen] | None = None,
    gone_consumer: str | None = None,
) -> ClusterView:
    """What reconcile reads: the child's latest event, else our own fresher write, else the
    cache; ``child`` falls back to a GET for an object the cache cannot hold (not ours)."""
    events = events or {}

    def cached(kind: str, namespace: str, name: str) -> Obj | None:
        key = (kind, namespace, name)
        if key in events:
            seen, tombstone = events[key]
            return recent.fresher(key, seen, tombstone=tombstone)
        stored = first(indexes[BY_KIND[kind].index].get((namespace, name)))
        return recent.fresher(key, stored)

    def child(kind: str, namespace: str, name: str) -> Obj | None:
        found = cached(kind, namespace, name)
        if found is None and (kind, namespace, name) not in events:
            return api.get(kind, namespace, name)
        return found

    def pods(namespace: str, name: str) -> Sequence[Obj]:
        return [_parse(pod) for pod in _copy(indexes[PODS.index].get((namespace, name)))]

    def consumers(namespace: str) -> Sequence[Obj]:
        return consumers_in(indexes, namespace, gone_consumer)

    def written(namespace: str, result: ChildResult) -> None:
        if result.live is None:
            return
        where = (result.kind, namespace, result.name)
        if result.outcome is Outcome.DELETED:
            recent.deleted(where, result.live)
        elif result.wrote:
            stored = first(indexes[BY_KIND[result.kind].index].get((namespace, result.name)))
            recent.applied(where, result.live, cached=stored)

    return ClusterView(child=child, cached=cached, pods=pods, consumers=consumers, written=written)
