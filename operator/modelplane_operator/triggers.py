"""Every reason to reconcile a ModelDeployment, and what happens when one cannot finish.

kopf calls in for the ModelDeployment itself (create, spec update, resume), which
only queues its key (work_queue.py), and for every event of a child or pod, which is
decided on the event loop; both end in :func:`_reconcile` on a worker thread, under
the ModelDeployment's lock. A reconcile that raises RetryLater is retried by the one
:class:`~modelplane_operator.retrier.Retrier`, whatever started it; a spec the
operator cannot serve gets its condition and Warning event, and waits for a change.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from modelplane_api import names
from modelplane_operator import kopf_toggles
from modelplane_operator.consumers import reconcile_consumer
from modelplane_operator.freshness import RecentWrites
from modelplane_operator.kinds import BY_KIND, MODEL_CONSUMER, PODS
from modelplane_operator.metrics import forget_model_deployment
from modelplane_operator.reconcile import ReconcileResult, RetryLater, SpecRejected, reconcile
from modelplane_operator.watch_cache import (
    ChildKey,
    Seen,
    cluster_view,
    consumers_in,
    model_consumer,
    model_deployment,
    model_names,
    models_by_access,
)

log = logging.getLogger("modelplane.operator")
Obj = dict[str, Any]
Key = tuple[str, str]


def on_model_deployment(
    body: Mapping[str, Any], memo: kopf.Memo, indexes: Mapping[str, Any]
) -> None:
    """Created, spec changed or resumed: reconciled from the work queue, so that kopf's
    worker for it (holding its event) ends now. A spec the operator cannot serve gets its
    status condition and Warning event there."""
    _queue(memo, indexes, (body["metadata"]["namespace"], body["metadata"]["name"]))


async def on_child_event(event: kopf.RawEvent, memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """A child or pod changed: reconcile its owner (status, and drift repair).

    Decided on the event loop, the owner queued: most events of a burst are our own
    applies coming back, and the rest (a restart lists some 40,000) come four or more to
    an owner, which one reconcile answers."""
    obj = event["object"]
    meta = obj.get("metadata", {})
    owner = meta.get("labels", {}).get(names.LABEL_INSTANCE)
    if not owner:
        return
    key = (meta.get("namespace", ""), owner)
    kind = obj.get("kind", "")
    tombstone: tuple[ChildKey, Seen] | None = None
    if kind in BY_KIND and kind != PODS.kind:
        where = (kind, key[0], meta.get("name", ""))
        if event["type"] == "DELETED":
            # Fresher than the cache, as a tombstone: the deleted object's resourceVersion
            # tells a write of ours from before the deletion (freshness.py). Any other
            # event the cache holds already (kopf indexes an event before its handlers).
            tombstone = (where, (None, dict(obj)))
        elif memo.recent.echo(where, obj):
            return  # our own apply coming back: the reconcile that made it saw it
    if model_deployment(indexes, key) is None and owner.endswith(names.CANARY_SUFFIX):
        key = (key[0], owner.removesuffix(names.CANARY_SUFFIX))  # a canary's child or pod
    if _live_body(memo, indexes, key) is not None:
        if tombstone is not None:
            memo.events.add(key, *tombstone)
        _queue(memo, indexes, key)


def _queue(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key) -> None:
    """The ModelDeployment ``key`` reconciled from the work queue (on the event loop)."""
    memo.queue.add(key, lambda: _reconcile_queued(memo, indexes, key))


def _reconcile_queued(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key) -> None:
    events = memo.events.take(key)  # every child event since the last reconcile of it
    if (body := _live_body(memo, indexes, key)) is not None:
        _attempt(memo, indexes, key, body, events)


async def on_model_deployment_event(
    event: kopf.RawEvent, memo: kopf.Memo, indexes: Mapping[str, Any]
) -> None:
    """A ModelDeployment appeared or went: the consumers of its namespace say what they may
    call. (Objects listed at start-up come without a type: each consumer resumes anyway.)
    Decided on the event loop (most events need nothing), as a child's."""
    if event["type"] not in {"ADDED", "DELETED"}:
        return
    namespace = event["object"].get("metadata", {}).get("namespace", "")
    if event["type"] == "DELETED":  # one without children has no child event to forget it
        forget_model_deployment(namespace, event["object"].get("metadata", {}).get("name", ""))
    consumers = consumers_in(indexes, namespace)
    if not consumers:
        return  # else every model of the namespace is parsed per event: O(N^2) on a create burst
    await kopf_toggles.all_indexed(memo)  # during start-up: the namespace's models all known
    await _on_a_thread(memo, _consumers_changed, memo, indexes, namespace, consumers)


def _consumers_changed(
    memo: kopf.Memo, indexes: Mapping[str, Any], namespace: str, consumers: list[Obj]
) -> None:
    models = models_by_access(indexes, namespace)
    for consumer in consumers:
        key = consumer_key(namespace, consumer["metadata"]["name"])
        _attempt_consumer(memo, indexes, key, consumer, reject=False, models=models)


async def _on_a_thread(memo: kopf.Memo, work: Callable[..., None], *args: Any, **kw: Any) -> None:
    """``work`` on kopf's executor, where its sync handlers run (kube calls block)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(memo.executor, functools.partial(work, *args, **kw))


# --- ModelConsumers ---------------------------------------------------------------------------


def consumer_key(namespace: str, name: str) -> Key:
    """A consumer's key for locks and retries: never equal to a ModelDeployment's."""
    return (namespace, f"{MODEL_CONSUMER.kind}/{name}")


def on_model_consumer(body: Mapping[str, Any], memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """Created, spec changed or resumed. SpecRejected goes back to the kopf handler."""
    key = consumer_key(body["metadata"]["namespace"], body["metadata"]["name"])
    _attempt_consumer(memo, indexes, key, body, reject=True)


def on_consumer_event(event: kopf.RawEvent, memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """A consumer changed (its key, grants, limits) or went: every model of its namespace
    renders its access description again (unchanged ones cost no write)."""
    memo.sweep.start(lambda: sweep_consumers(memo, indexes))  # indexes: kopf's live ones
    meta = event["object"].get("metadata", {})
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    gone = name if event["type"] == "DELETED" else None
    if gone:
        forget(consumer_key(namespace, name), memo)
    for model in model_names(indexes, namespace):
        key = (namespace, model)
        if (body := _live_body(memo, indexes, key)) is not None:
            _attempt(memo, indexes, key, body, None, gone_consumer=gone)


def sweep_consumers(memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """Every ModelConsumer reconciled again: its key Secret read, a missing one replaced."""
    for namespace in list(indexes[MODEL_CONSUMER.index]):
        models = models_by_access(indexes, namespace)
        for body in consumers_in(indexes, namespace):
            if not body["metadata"].get("deletionTimestamp"):
                key = consumer_key(namespace, body["metadata"]["name"])
                _attempt_consumer(memo, indexes, key, body, reject=False, models=models)


def _attempt_consumer(
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    key: Key,
    body: Mapping[str, Any],
    *,
    reject: bool,
    models: Mapping[str, bool] | None = None,
) -> None:
    """``models``: the namespace's models by access, when the caller has them already
    (one parse of each model for a pass over many consumers)."""
    if models is None:
        models = models_by_access(indexes, key[0])
    recheck: float | None = None
    try:
        with memo.locks(key):
            result = reconcile_consumer(
                body,
                memo.api,
                models,
                now=lambda: datetime.datetime.now(datetime.UTC),
            )
        recheck = result.recheck_after
    except SpecRejected:
        memo.retrier.succeeded(key)
        if reject:
            raise
        return
    except RetryLater as later:
        delay = memo.retrier.schedule(
            key, lambda: _retry_consumer(memo, indexes, key), at_least=later.delay
        )
        log.info("reconcile of %s/%s will be retried in %.1fs: %s", *key, delay, later)
        return
    except Exception:
        log.exception("reconcile of %s/%s failed unexpectedly", *key)
        memo.retrier.schedule(key, lambda: _retry_consumer(memo, indexes, key), at_least=1.0)
        return
    memo.retrier.succeeded(key)
    if recheck is not None:  # a rotated-out key expires then: the status drops it
        memo.retrier.schedule(key, lambda: _retry_consumer(memo, indexes, key), at_least=recheck)


def _retry_consumer(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key) -> None:
    namespace, name = key[0], key[1].split("/", 1)[1]
    body = model_consumer(indexes, (namespace, name))
    if body is None or body["metadata"].get("deletionTimestamp"):
        forget(key, memo)
        return
    _attempt_consumer(memo, indexes, key, body, reject=False)


# --- retries ----------------------------------------------------------------------------------


def _retry(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key) -> None:
    if (body := _live_body(memo, indexes, key)) is not None:
        _attempt(memo, indexes, key, body, None)


def _live_body(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key) -> Obj | None:
    """The ModelDeployment from the cache, or None (and forgotten) once gone or going:
    its children are being collected."""
    body = model_deployment(indexes, key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        forget(key, memo)
        return None
    return body


def _attempt(
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    key: Key,
    body: Mapping[str, Any],
    events: Mapping[ChildKey, Seen] | None,
    *,
    gone_consumer: str | None = None,
) -> None:
    try:
        result = _reconcile(body, memo, indexes, events, gone_consumer)
    except SpecRejected as rejected:
        memo.retrier.succeeded(key)  # nothing to retry: the spec must change
        if rejected.newly:  # whatever triggered it: a spec change, a consumer, a child
            memo.api.warn(body, rejected.reason, str(rejected))
    except RetryLater as later:
        _retry_later(memo, indexes, key, later)
    except Exception as exc:
        log.exception("reconcile of %s/%s failed unexpectedly", *key)
        _retry_later(memo, indexes, key, RetryLater(f"{type(exc).__name__}: {exc}", delay=0.0))
    else:
        memo.retrier.succeeded(key)
        if result.recheck_after is not None:  # a canary under analysis: look again
            memo.retrier.schedule(
                key, lambda: _retry(memo, indexes, key), at_least=result.recheck_after
            )


def _retry_later(memo: kopf.Memo, indexes: Mapping[str, Any], key: Key, later: RetryLater) -> None:
    delay = memo.retrier.schedule(key, lambda: _retry(memo, indexes, key), at_least=later.delay)
    log.info("reconcile of %s/%s will be retried in %.1fs: %s", *key, delay, later)


def _reconcile(
    body: Mapping[str, Any],
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    events: Mapping[ChildKey, Seen] | None,
    gone_consumer: str | None = None,
) -> ReconcileResult:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    recent: RecentWrites = memo.recent
    with memo.locks(key):
        current = dict(body)
        # Our own last status write may be newer than the watch event we were given.
        written = memo.written.get(key)
        if written is not None and written[0] == body["metadata"].get("uid"):
            current["status"] = written[1]

        def remember(status: Obj) -> None:
            memo.written[key] = (body["metadata"].get("uid"), status)

        return reconcile(
            current,
            memo.api,
            memo.config,
            cluster_view(memo.api, recent, indexes, events, gone_consumer),
            on_status_written=remember,
        )


def forget(key: Key, memo: kopf.Memo) -> None:
    """A ModelDeployment is gone: drop what the operator kept about it."""
    memo.written.pop(key, None)
    memo.events.take(key)
    forget_model_deployment(*key)
    memo.recent.forget(*key)
    memo.handled.forget(key)
    memo.retrier.succeeded(key)
    memo.locks.drop(key)
