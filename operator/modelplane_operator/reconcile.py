"""The one level-based reconcile: parse -> render -> apply -> status.

Called for every reason the operator has to look at a ModelDeployment (created,
spec changed, operator restarted, a child or pod changed, a retry);
it compares the whole desired state with the whole live state, so every caller
gets the same answer and an unchanged ModelDeployment costs no write.
It knows nothing of kopf: errors are raised as the domain exceptions below
and translated once, in handlers.py.
"""

from __future__ import annotations

import copy
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelplane_api import names
from modelplane_api.access import AccessTable
from modelplane_api.consumer import ModelConsumer, access_table, parse_model_consumer
from modelplane_api.spec import (
    InvalidSpecError,
    ModelDeployment,
    ModelStatus,
    parse_model_deployment,
)
from modelplane_operator import kinds
from modelplane_operator.applier import (
    ChildResult,
    LiveLookup,
    Outcome,
    WriteNotice,
    apply_children,
)
from modelplane_operator.canary import CanaryState, observe_canary
from modelplane_operator.config import OperatorConfig
from modelplane_operator.kube import ApiError, KubeApi
from modelplane_operator.metrics import (
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    forget_model_deployment,
    observe_status,
)
from modelplane_operator.render import (
    Observed,
    Unrenderable,
    canary_weight,
    guaranteed_replicas,
    render_children,
    served_spec,
    service_host,
    service_url,
)
from modelplane_operator.status import Problem, compute_status, status_patch

Obj = dict[str, Any]
log = logging.getLogger("modelplane.operator")

FORBIDDEN_RETRY_SECONDS = 10.0


class SpecRejected(Exception):
    """The spec cannot be served; the status says why. Wait for the next spec change."""

    def __init__(self, reason: str, message: str, *, newly: bool) -> None:
        super().__init__(message)
        self.reason = reason  # the status condition's reason, and the Warning event's
        self.newly = newly  # False when the status already said so: no new Warning event


class RetryLater(Exception):
    """A passing condition (API conflict, throttling, outage, a child in the way)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class ClusterView:
    """What reconcile reads: children by (kind, namespace, name), pods by owner name, the
    ModelConsumers of a namespace.

    ``child`` may ask the API when the watch cache has nothing; ``cached`` never does.
    """

    child: LiveLookup
    cached: LiveLookup
    pods: Callable[[str, str], Sequence[Obj]]
    consumers: Callable[[str], Sequence[Obj]] = lambda namespace: ()
    written: WriteNotice = lambda namespace, result: None  # what reads must see from now on


@dataclass(frozen=True)
class ReconcileResult:
    children: list[ChildResult]
    status_written: bool
    recheck_after: float | None = None  # a canary under analysis: reconcile again then

    @property
    def writes(self) -> int:
        return sum(r.wrote for r in self.children) + int(self.status_written)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_reference(body: Mapping[str, Any]) -> Obj:
    """The controller reference a child carries to its ModelDeployment or ModelConsumer."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": body.get("kind") or names.KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def reconcile(
    body: Mapping[str, Any],
    api: KubeApi,
    config: OperatorConfig,
    cluster: ClusterView,
    *,
    now: Callable[[], str] = _now,
    on_status_written: Callable[[Obj], None] = lambda status: None,
) -> ReconcileResult:
    started = time.perf_counter()
    try:
        result = _reconcile(
            body, api, config, cluster, now=now, on_status_written=on_status_written
        )
    except SpecRejected:
        RECONCILES.labels("invalid").inc()
        raise
    except RetryLater:
        RECONCILES.labels("retry").inc()
        RECONCILE_ERRORS.inc()
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
    RECONCILES.labels("changed" if result.writes else "unchanged").inc()
    return result


def _reconcile(
    body: Mapping[str, Any],
    api: KubeApi,
    config: OperatorConfig,
    cluster: ClusterView,
    *,
    now: Callable[[], str],
    on_status_written: Callable[[Obj], None],
) -> ReconcileResult:
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    previous: Mapping[str, Any] = body.get("status") or {}

    writer = StatusWriter(api, cluster, namespace, name, generation, previous, now)
    writer.on_written = on_status_written
    write_status = writer.write
    try:
        md = parse_model_deployment(resource_fields(body))
    except InvalidSpecError as exc:
        message = "; ".join(exc.problems)
        newly = write_status(Problem("InvalidSpec", message))
        raise SpecRejected("InvalidSpec", message, newly=newly) from None
    scaling = md.spec.autoscaling
    writer.scales_from_zero = scaling is not None and scaling.scales_to_zero
    table = _access(md, cluster, now()) if md.spec.restricted else None
    canary = observe_canary(
        md,
        api=api,
        body=body,
        config=config,
        cached=cluster.cached,
        pods=cluster.pods,
        previous=previous,
    )
    observed = Observed(
        access=table,
        canary_ready=canary.ready,
        canary_rolled_back=canary.rolled_back,
        model_on_canary=canary.model_on_it,
    )
    writer.extra = _status_extras(md, config, canary, observed)
    url = service_url(md, config)
    served = served_spec(md).spec.model
    model = ModelStatus(uri=served.uri, sha256=served.sha256)
    try:
        rendered = render_children(md, config, observed)
    except Unrenderable as exc:
        newly = write_status(Problem(exc.reason, str(exc)), url, model)
        raise SpecRejected(exc.reason, str(exc), newly=newly) from None
    desired = [copy.deepcopy(child) for child in rendered]
    for child in desired:
        child["metadata"]["ownerReferences"] = [owner_reference(body)]
    unwanted = _unwanted(desired, namespace, name)
    try:
        children = apply_children(
            api,
            meta["uid"],
            desired,
            unwanted,
            live=cluster.child,
            cached=cluster.cached,
            written=cluster.written,
        )
    except ApiError as exc:
        failure = _apply_failed(exc, api, config, desired, lambda p: write_status(p, url, model))
        raise failure from None

    foreign = [r for r in children if r.outcome is Outcome.NOT_OWNED]
    if foreign:
        message = "; ".join(
            f"{r.kind} {namespace}/{r.name} exists and is not owned by this ModelDeployment: "
            "delete or rename it"
            for r in foreign
        )
        write_status(Problem("ChildNotOwned", message), url, model)
        raise RetryLater(message, delay=config.conflict_retry_seconds)
    applied = next(
        (r.live for r in children if r.kind == "Deployment" and r.name == name and r.live), None
    )
    written = write_status(None, url, model, applied)
    return ReconcileResult(children, written, canary.recheck_after)


@dataclass
class StatusWriter:
    """Writes a ModelDeployment's status when it changed: what the Deployment and pods say,
    or the problem found, plus the parts only reconcile knows (``extra``)."""

    api: KubeApi
    cluster: ClusterView
    namespace: str
    name: str
    generation: int
    previous: Mapping[str, Any]
    now: Callable[[], str]
    on_written: Callable[[Obj], None] = lambda status: None
    scales_from_zero: bool = False
    extra: Obj = field(default_factory=dict)  # status.host, status.canary

    def write(
        self,
        problem: Problem | None = None,
        url: str | None = None,
        model: ModelStatus | None = None,
        deployment: Obj | None = None,
    ) -> bool:
        namespace, name, previous = self.namespace, self.name, self.previous
        status = compute_status(
            name=name,
            generation=self.generation,
            previous=previous,
            url=url,
            model=model,
            # Just applied, the Deployment may not have reached the watch cache yet.
            deployment=deployment or self.cluster.cached("Deployment", namespace, name),
            pods=self.cluster.pods(namespace, name),
            problem=problem,
            now=self.now(),
            scales_from_zero=self.scales_from_zero,
        )
        status.update(self.extra)
        observe_status(namespace, name, status)
        if status == previous:
            return False
        try:
            self.api.patch_status(namespace, name, status_patch(previous, status))
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile: nothing to report on
                forget_model_deployment(namespace, name)
                return False
            raise RetryLater(f"status write failed: {exc}", delay=_delay(exc)) from None
        self.on_written(status)
        return True


def _apply_failed(
    exc: ApiError,
    api: KubeApi,
    config: OperatorConfig,
    desired: Sequence[Obj],
    write_status: Callable[[Problem], bool],
) -> Exception:
    """An apply the API server refused, as the exception reconcile raises (status written)."""
    if exc.status in {401, 403}:
        # The operator's own rights (RBAC, admission): fixed without a spec change, so
        # keep trying; the status says what was refused meanwhile.
        message = f"the API server refused the operator: {exc.message}"
        write_status(Problem("Forbidden", message))
        return RetryLater(message, delay=FORBIDDEN_RETRY_SECONDS)
    if exc.status == 404 and (missing := _unserved(api, desired)) is not None:
        # A CRD not installed (KEDA, the HTTP add-on, Gateway API): it may come later.
        write_status(Problem("DependencyMissing", missing))
        return RetryLater(missing, delay=config.conflict_retry_seconds)
    if exc.retryable:
        if exc.status >= 500:
            # Retried, but it may persist (say "failed to allocate a serviceIP: range
            # is full"): the status says so meanwhile. Conflicts and 429 pass quietly.
            message = f"the API server failed to apply a child (retrying): {exc.message}"
            write_status(Problem("ApplyFailed", message, stalled=False))
        return RetryLater(f"applying children failed: {exc}", delay=_delay(exc))
    # The API server refused what we rendered (e.g. affinity contents): the spec must change.
    message = f"the API server rejected a child: {exc.message}"
    newly = write_status(Problem("ChildRejected", message))
    return SpecRejected("ChildRejected", message, newly=newly)


def _status_extras(
    md: ModelDeployment, config: OperatorConfig, canary: CanaryState, observed: Observed
) -> Obj:
    """status.host (scale to zero) and status.canary, beside what the Deployment tells."""
    extra: Obj = {}
    if host := service_host(md, config):
        extra["host"] = host
    if canary.status is not None:
        extra["canary"] = canary.with_weight(canary_weight(md, observed))
    return extra


def _unwanted(desired: Sequence[Obj], namespace: str, name: str) -> list[tuple[str, str, str]]:
    """The optional children not rendered this time: deleted if the operator made them."""
    present = {(obj["kind"], obj["metadata"]["name"]) for obj in desired}
    return [
        (kind.kind, namespace, kind.child_name(name))
        for kind in kinds.CHILDREN
        if kind.optional and (kind.kind, kind.child_name(name)) not in present
    ]


def _unserved(api: KubeApi, desired: Sequence[Obj]) -> str | None:
    """After a 404 from an apply: a kind Kubernetes does not serve by itself, not installed
    (asked of discovery only now, on the error path), and what to install."""
    for obj in desired:
        kind = kinds.BY_KIND.get(obj["kind"])
        if kind is not None and kind.provider and not api.serves(kind.kind):
            return (
                f"the API server does not serve {kind.kind} ({kind.api_version}): install "
                f"{kind.provider}, or change the spec that needs it (retrying)"
            )
    return None


def _access(md: ModelDeployment, cluster: ClusterView, now: str) -> AccessTable:
    """The namespace's consumers, and how many replicas share their limits: the
    Deployment's count (spec.replicas, or what the HPA set). Not the ready count: that
    moves with every rollout, faster than the kubelet refreshes a mounted ConfigMap."""
    consumers: list[ModelConsumer] = []
    for body in cluster.consumers(md.namespace):
        try:
            # Its status says which keys work (digests only).
            consumers.append(
                parse_model_consumer({**resource_fields(body), "status": body.get("status")})
            )
        except InvalidSpecError:
            continue  # its own status says why; it grants nothing meanwhile
    deployment = cluster.cached("Deployment", md.namespace, md.name) or {}
    live = (deployment.get("spec") or {}).get("replicas")
    # Never below the guaranteed count: a new autoscaled Deployment says 1 until the HPA
    # first acts, and that would be one more write for nothing.
    replicas = guaranteed_replicas(md)
    if isinstance(live, int) and not isinstance(live, bool):
        replicas = max(replicas, live)
    moment = datetime.datetime.fromisoformat(now)
    return access_table(consumers, replicas, moment)


def resource_fields(body: Mapping[str, Any]) -> Obj:
    """What a resource's parser reads: no status, no fields the API server added."""
    return {k: v for k, v in body.items() if k in {"apiVersion", "kind", "metadata", "spec"}}


def _delay(exc: ApiError) -> float:
    return 10.0 if exc.status == 429 else 2.0
