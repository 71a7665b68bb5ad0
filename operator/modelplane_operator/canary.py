"""A ModelDeployment's canary as the cluster shows it: Ready on its own spec, how far a
promotion has got, and, under analysis, whether it passed a bound.

A bound passed rolls that canary revision back for good: a Warning event, weight 0, and
status.canary saying why, until spec.canary.model or .runtime changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelplane_api import names
from modelplane_api.spec import CanaryStatus, ModelDeployment
from modelplane_operator import analysis, kinds
from modelplane_operator.config import OperatorConfig
from modelplane_operator.kube import KubeApi
from modelplane_operator.render import canary_spec, pods_of, revision
from modelplane_operator.status import judge_deployment

Obj = dict[str, Any]
log = logging.getLogger("modelplane.operator")


@dataclass(frozen=True)
class CanaryState:
    status: CanaryStatus | None = None
    ready: bool = False
    rolled_back: bool = False
    model_on_it: bool = False
    recheck_after: float | None = None

    def with_weight(self, weight: int) -> Obj:
        """status.canary, with the weight the route gives it now."""
        assert self.status is not None
        updated = self.status.model_copy(update={"weight": weight})
        return updated.model_dump(by_alias=True, exclude_none=True)


def observe_canary(
    md: ModelDeployment,
    *,
    api: KubeApi,
    body: Mapping[str, Any],
    config: OperatorConfig,
    cached: Callable[[str, str, str], Obj | None],
    pods: Callable[[str, str], Sequence[Obj]],
    previous: Mapping[str, Any],
) -> CanaryState:
    """How far the canary has got, and, under analysis, whether it passed a bound (which
    rolls this revision back for good: a Warning event, and weight 0 until it changes)."""
    view, spec = canary_spec(md), md.spec.canary
    if view is None or spec is None:
        return CanaryState()
    canary_name = kinds.CANARY_DEPLOYMENT.child_name(md.name)
    wanted = revision(view)
    deployment = cached("Deployment", md.namespace, canary_name)
    ready = (
        _serves(deployment, wanted)
        and judge_deployment(deployment, pods(md.namespace, canary_name)).ready
    )
    model = cached("Deployment", md.namespace, md.name)
    model_on_it = (
        spec.promote
        and _serves(model, wanted)
        and judge_deployment(model, pods(md.namespace, md.name)).ready
    )
    before = previous.get("canary") or {}
    same = before.get("revision") == wanted
    rolled_back = bool(same and before.get("rolledBack"))
    status = CanaryStatus(
        revision=wanted,
        ready_replicas=int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0),
        rolled_back=rolled_back,
        reason=before.get("reason") if rolled_back else None,
        message=before.get("message") if rolled_back else None,
    )
    state = CanaryState(status, ready, rolled_back, model_on_it)
    judged = spec.analysis
    if rolled_back or spec.promote or not ready or spec.weight == 0 or judged is None:
        return _explained(state, md, spec.weight)
    if not config.prometheus_url:
        status = status.model_copy(
            update={
                "reason": "AnalysisNotConfigured",
                "message": "canary.analysis needs the operator's Prometheus address (the "
                "chart's prometheus.url): the canary is not being judged",
            }
        )
        return CanaryState(status, ready, rolled_back, model_on_it)
    try:
        finding = analysis.judge(
            config.prometheus_url, pods_of(md, kinds.CANARY_DEPLOYMENT), judged
        )
    except analysis.PrometheusUnavailable as exc:
        finding = analysis.Finding(False, "AnalysisFailed", f"Prometheus did not answer: {exc}")
    status = status.model_copy(
        update={
            "rolled_back": finding.passed_bound,
            "reason": finding.reason,
            "message": finding.message,
        }
    )
    if finding.passed_bound:
        log.warning("canary of %s/%s rolled back: %s", md.namespace, md.name, finding.message)
        api.warn(body, "CanaryRolledBack", finding.message)
        return CanaryState(status, ready, True, model_on_it)
    return CanaryState(status, ready, False, model_on_it, float(judged.interval_seconds))


def _explained(state: CanaryState, md: ModelDeployment, weight: int) -> CanaryState:
    """The reason a canary without a verdict to give has the weight it has."""
    if state.status is None or state.rolled_back:
        return state
    spec = md.spec.canary
    if spec is not None and spec.promote:
        reason, message = "Promoting", "the model is rolling to the canary's spec"
    elif not state.ready:
        reason, message = "NotReady", "the canary gets traffic once it is Ready"
    elif weight == 0:
        reason, message = "Aborted", "canary.weight is 0: all traffic goes to the model"
    else:
        reason, message = "Serving", f"the canary takes {weight}% of the route's traffic"
    status = state.status.model_copy(update={"reason": reason, "message": message})
    return CanaryState(status, state.ready, state.rolled_back, state.model_on_it)


def _serves(deployment: Mapping[str, Any] | None, wanted: str) -> bool:
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(names.ANNOTATION_REVISION) == wanted
