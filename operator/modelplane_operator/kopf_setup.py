"""kopf's configuration, login and shutdown: the operator's one startup hook."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelplane_api import names
from modelplane_operator import kopf_toggles
from modelplane_operator.config import OperatorConfig
from modelplane_operator.freshness import RecentWrites
from modelplane_operator.handled import ObservedGenerationDiffBase, RetryAnnotations
from modelplane_operator.kinds import MODEL_DEPLOYMENT
from modelplane_operator.kube import KubeApi, load_client
from modelplane_operator.locks import KeyedLocks
from modelplane_operator.retrier import Retrier
from modelplane_operator.sweep import Sweep
from modelplane_operator.watch_cache import PendingEvents
from modelplane_operator.work_queue import WorkQueue

log = logging.getLogger("modelplane.operator")
LIST_CHUNK_SIZE = 500  # client-go's pager uses 500 too


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, handler_ids: Iterable[str]) -> None:
    """Typed config, the API client and the operator's state go into memo."""
    config = OperatorConfig()
    api = KubeApi(load_client())
    # kopf serves only the resources it finds at start (scanning is off, see below), so
    # wait here for the CRD rather than start without it.
    if not api.serves(MODEL_DEPLOYMENT.kind):
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
    # Which namespaces are watched is kopf's own --namespace/--all-namespaces.
    settings.scanning.disabled = True
    # No settings.queueing.worker_limit: ModelConsumer workers still wait for every listed
    # object to be indexed before running handlers, so with more consumers listed at start
    # than the limit, the workers holding the slots would wait for objects that never get
    # one (seen before kopf_toggles: 1,000 ModelDeployments, limit 50, nothing reconciled
    # in 7 minutes).
    # The start-up listing in pages: kopf's default is one response per kind, all of it
    # parsed and held while its objects are handed out (10,000 Deployments at once).
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    memo.config = config
    memo.executor = settings.execution.executor  # event handlers' reconciles run there too
    memo.events = PendingEvents()  # children's events for their owners' queued reconciles
    memo.queue = WorkQueue(
        settings.execution.executor,
        settings.execution.max_workers or 4,
        gate=functools.partial(kopf_toggles.all_indexed, memo),
    )
    memo.api = api
    memo.locks = KeyedLocks()
    memo.retrier = Retrier(cap=config.retry_cap_seconds)
    memo.recent = RecentWrites()  # children this operator wrote, until the cache has them
    memo.written = {}  # (namespace, name) -> the status this operator last wrote
    memo.sweep = Sweep(config.key_recheck_seconds)  # started by the first consumer event
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address)


def report_unapplied(patches: Mapping[str, bool]) -> None:
    """A kopf whose internals differ from the ones kopf_toggles was written for keeps its own
    behaviour: correct, but start-up with many objects is slower and holds more memory."""
    for what, applied in patches.items():
        if not applied:
            log.warning(
                "kopf %s: not patched (%s); kopf's own behaviour is used, so a start-up "
                "with thousands of objects is slower and needs more memory",
                version("kopf"),
                what,
            )


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig (read now, not at import)."""
    found: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if found is not None:
        return dataclasses.replace(found, server=in_cluster_server(os.environ, found.server))
    return kopf.login_with_kubeconfig(**kwargs)


def in_cluster_server(environ: Mapping[str, str], named: str) -> str:
    """The API server's address as client-go's in-cluster config finds it: the ``kubernetes``
    Service's address, which the kubelet puts in every pod's environment. kopf's own login
    names ``kubernetes.default.svc``, which needs cluster DNS (and its default domain): on a
    real node with no DNS yet, the operator could not start while the kubernetes client,
    reading the same variables, could."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return named
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def stop(memo: kopf.Memo) -> None:
    queue = getattr(memo, "queue", None)
    if queue is not None:
        queue.stop()
    sweep = getattr(memo, "sweep", None)
    if sweep is not None:
        sweep.stop()
    retrier = getattr(memo, "retrier", None)
    if retrier is not None:
        retrier.cancel_all()
    api = getattr(memo, "api", None)
    if api is not None:
        api.client.close()
