"""What a ModelDeployment's status says, computed from its children. Pure.

Ready is True only when the Deployment has observed its current generation,
every replica runs the current template and is available. Otherwise the
reason says why, most specific first; ``Reconciling`` and ``Stalled`` follow
kstatus: Reconciling while the cluster is still converging, Stalled when it
will not converge without a change by someone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelplane_api import facts, names
from modelplane_api.spec import Condition, ModelDeploymentStatus, ModelStatus

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str
    stalled: bool = False


@dataclass(frozen=True)
class Problem:
    """Something the operator itself found: an invalid spec, a child it does not own."""

    reason: str
    message: str
    stalled: bool = True


def status_patch(previous: Obj, new: Obj) -> dict[str, Any]:
    """The merge patch that turns ``previous`` into ``new``: a merge patch keeps every key
    it does not name, so a key gone from ``new`` (at any depth of maps) is nulled."""
    patch: dict[str, Any] = {key: None for key in previous if key not in new}
    for key, value in new.items():
        before = previous.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = status_patch(before, value)
        else:
            patch[key] = value
    return patch


def selector(model_deployment_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in names.selector_labels(model_deployment_name).items())


def _condition(conditions: Sequence[Obj], kind: str) -> Obj:
    return next((c for c in conditions if c.get("type") == kind), {})


def _fetch_failure(pods: Sequence[Obj]) -> str | None:
    """The last fetch error of a pod whose fetch has not (yet) succeeded."""
    for pod in pods:
        for status in pod.get("status", {}).get("initContainerStatuses", []):
            if status.get("name") != names.FETCH_CONTAINER:
                continue
            current = status.get("state", {})
            if (current.get("terminated") or {}).get("exitCode") == 0:
                continue  # it failed before, then succeeded: the past no longer matters
            for state in (current, status.get("lastState", {})):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode", 0) != 0:
                    detail = (terminated.get("message") or terminated.get("reason") or "").strip()
                    return (
                        detail.splitlines()[-1] if detail else f"exit code {terminated['exitCode']}"
                    )
    return None


def _fetch_stalled(pods: Sequence[Obj]) -> Verdict | None:
    """A fetch that gave up on failures that may pass (a stall, resets, 5xx, 429): its
    termination message says "FetchStalled: <the attempt and the last error>". While the
    kubelet runs it again, the fetch is Retrying (run N since when); until then, Stalled."""
    prefix = facts.FETCH_STALLED + ": "
    for pod in pods:
        for status in pod.get("status", {}).get("initContainerStatuses", []):
            if status.get("name") != names.FETCH_CONTAINER:
                continue
            current = status.get("state") or {}
            ended = (current.get("terminated") or {}) or (
                (status.get("lastState") or {}).get("terminated") or {}
            )
            message = (ended.get("message") or "").strip()
            if ended.get("exitCode") in (0, None) or not message.startswith(prefix):
                continue
            why = message.removeprefix(prefix)
            if (running := current.get("running")) is not None:
                run = int(status.get("restartCount") or 0) + 1
                since = running.get("startedAt") or "an unknown time"
                return Verdict(
                    False,
                    facts.FETCH_RETRYING,
                    f"fetching the model again (run {run} of the fetch, since {since}); "
                    f"the last run stalled: {why}",
                )
            return Verdict(False, facts.FETCH_STALLED, f"the model fetch stalled: {why}")
    return None


def _fetch_trouble(pods: Sequence[Obj]) -> Verdict | None:
    if (stalled := _fetch_stalled(pods)) is not None:
        return stalled
    if (failure := _fetch_failure(pods)) is not None:
        return Verdict(False, "ModelFetchFailed", f"the model fetch failed: {failure}")
    return None


def _load_failure(pods: Sequence[Obj]) -> str | None:
    """What a runtime that could not load its model said as it exited (its termination
    message), while it has not come up since."""
    prefix = facts.MODEL_LOAD_FAILED + ": "
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses", []):
            if status.get("name") != names.RUNTIME_CONTAINER or status.get("ready"):
                continue
            for state in (status.get("state", {}), status.get("lastState", {})):
                message = ((state.get("terminated") or {}).get("message") or "").strip()
                if message.startswith(prefix):
                    return message.removeprefix(prefix)
    return None


# Waiting reasons the kubelet gives for an image it cannot get: nothing converges until
# someone fixes the image reference or the registry's credentials.
IMAGE_PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


def _container_statuses(pod: Obj) -> list[Obj]:
    status = pod.get("status", {})
    return [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]


def _image_failure(pods: Sequence[Obj]) -> tuple[str, str] | None:
    """(reason, the kubelet's message) for a container whose image cannot be pulled."""
    for pod in pods:
        for status in _container_statuses(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_FAILURES:
                message = waiting.get("message") or f"cannot pull {status.get('image')}"
                return str(waiting["reason"]), f"{status.get('name')}: {message}"
    return None


def _out_of_memory(pods: Sequence[Obj]) -> str | None:
    """The container the kernel killed for its memory limit, while it has not come up since."""
    for pod in pods:
        for status in _container_statuses(pod):
            if status.get("ready"):
                continue
            for state in (status.get("state", {}), status.get("lastState", {})):
                if ((state.get("terminated") or {}).get("reason")) == "OOMKilled":
                    return str(status.get("name"))
    return None


def cache_outcome(pods: Sequence[Obj]) -> str | None:
    """How the newest pod's fetch used the model cache (its termination message)."""
    newest = sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""))
    for pod in reversed(newest):
        for status in pod.get("status", {}).get("initContainerStatuses", []):
            terminated = (status.get("state") or {}).get("terminated") or {}
            message = (terminated.get("message") or "").strip()
            if status.get("name") == names.FETCH_CONTAINER and message.startswith(
                facts.MODEL_CACHE_REPORT
            ):
                return message.removeprefix(facts.MODEL_CACHE_REPORT)
    return None


def _fetching_since(pods: Sequence[Obj]) -> str | None:
    """When the model fetch of a pod still fetching began (its init container is running)."""
    for pod in pods:
        for status in pod.get("status", {}).get("initContainerStatuses", []):
            running = (status.get("state") or {}).get("running")
            if status.get("name") == names.FETCH_CONTAINER and running is not None:
                return str(running.get("startedAt") or "an unknown time")
    return None


def _unschedulable(pods: Sequence[Obj]) -> str | None:
    for pod in pods:
        scheduled = _condition(pod.get("status", {}).get("conditions", []), "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return str(scheduled.get("message", "no node fits the pod"))
    return None


def _pod_problem(pods: Sequence[Obj]) -> Verdict | None:  # noqa: PLR0911 - as above
    """What the pods say is keeping them from serving, most specific first."""
    if (pull := _image_failure(pods)) is not None:
        return Verdict(False, pull[0], pull[1], stalled=True)
    if (killed := _out_of_memory(pods)) is not None:
        return Verdict(
            False,
            "OOMKilled",
            f"container {killed} was killed for exceeding its memory limit: "
            "raise spec.resources.limits.memory",
        )
    if (fetch := _fetch_trouble(pods)) is not None:
        return fetch
    if (failure := _load_failure(pods)) is not None:
        return Verdict(False, facts.MODEL_LOAD_FAILED, failure)
    if (why := _unschedulable(pods)) is not None:
        return Verdict(False, "Unschedulable", why)
    if (since := _fetching_since(pods)) is not None:
        return Verdict(
            False, "FetchingModel", f"fetching the model since {since} (see the fetch-model log)"
        )
    return None


def judge_deployment(  # noqa: PLR0911 - one early answer per reason reads best
    deployment: Obj | None, pods: Sequence[Obj], *, scales_from_zero: bool = False
) -> Verdict:
    """Ready or not, and why, from the Deployment and its pods.

    Availability at the current generation wins over everything pods once said. A model
    that scales to zero is Ready at zero (its first request is held while a pod starts)
    and Activating while the first pod starts.
    """
    if deployment is None:
        return Verdict(False, "Progressing", "waiting for the Deployment to be created")
    status = deployment.get("status", {})
    conditions = status.get("conditions", [])
    wanted = deployment.get("spec", {}).get("replicas", 1)
    generation = deployment.get("metadata", {}).get("generation", 0)
    seen = status.get("observedGeneration", 0) >= generation
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    if (
        seen
        and wanted > 0
        and updated >= wanted
        and total <= updated
        and available >= wanted
        and _condition(conditions, "Available").get("status") == "True"
    ):
        return Verdict(True, "Available", f"{available} of {wanted} replicas available")
    progressing = _condition(conditions, "Progressing")
    if progressing.get("status") == "False" and progressing.get("reason") == (
        "ProgressDeadlineExceeded"
    ):
        return Verdict(
            False,
            "ProgressDeadlineExceeded",
            str(progressing.get("message", "the rollout is stuck")),
            stalled=True,
        )
    # The API server refused the pods (a missing ServiceAccount or PriorityClass, a quota,
    # Pod Security admission): nothing converges until someone acts, so say so at once.
    refused = _condition(conditions, "ReplicaFailure")
    if refused.get("status") == "True":
        return Verdict(
            False,
            str(refused.get("reason") or "ReplicaFailure"),
            str(refused.get("message", "the pods could not be created")),
            stalled=True,
        )
    if (problem := _pod_problem(pods)) is not None:
        return problem
    if not seen:
        return Verdict(False, "Progressing", "the Deployment controller has not seen this change")
    if wanted == 0 and scales_from_zero:
        return Verdict(
            True,
            "ScaledToZero",
            "no replicas while idle: the first request is held by the interceptor while one starts",
        )
    if wanted == 0:
        return Verdict(False, "ScaledToZero", "no replicas are requested")
    if scales_from_zero and available == 0:
        return Verdict(False, "Activating", f"starting the first of {wanted} replicas")
    if updated < wanted or total > updated:
        return Verdict(False, "Progressing", f"{updated} of {wanted} replicas updated")
    return Verdict(False, "Progressing", f"{available} of {wanted} replicas available")


def kstatus_conditions(
    previous: Obj, generation: int, verdict: Verdict, now: str
) -> list[Condition]:
    """Ready, Reconciling and Stalled for ``verdict``; a condition keeps its
    lastTransitionTime while its status stays the same."""
    reconciling = not verdict.ready and not verdict.stalled
    old = {c.get("type"): c for c in previous.get("conditions", [])}

    def condition(kind: str, true: bool, reason: str, message: str) -> Condition:
        status = "True" if true else "False"
        before = old.get(kind, {})
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        return Condition(
            type=kind,
            status=status,
            observed_generation=generation,
            last_transition_time=since or now,
            reason=reason,
            message=message,
        )

    return [
        condition("Ready", verdict.ready, verdict.reason, verdict.message),
        condition(
            "Reconciling",
            reconciling,
            verdict.reason if reconciling else "Settled",
            verdict.message if reconciling else "",
        ),
        condition(
            "Stalled",
            verdict.stalled,
            verdict.reason if verdict.stalled else "Settled",
            verdict.message if verdict.stalled else "",
        ),
    ]


def compute_status(
    *,
    name: str,
    generation: int,
    previous: Obj,
    url: str | None,
    model: ModelStatus | None,
    deployment: Obj | None,
    pods: Sequence[Obj],
    problem: Problem | None,
    now: str,
    scales_from_zero: bool = False,
) -> dict[str, Any]:
    verdict = (
        Verdict(False, problem.reason, problem.message, problem.stalled)
        if problem is not None
        else judge_deployment(deployment, pods, scales_from_zero=scales_from_zero)
    )
    deployment_status = (deployment or {}).get("status", {})
    if model is not None and (cached := cache_outcome(pods)) is not None:
        model = model.model_copy(update={"cache": cached})
    status = ModelDeploymentStatus(
        observed_generation=generation,
        url=url if url is not None else previous.get("url"),
        replicas=deployment_status.get("replicas", 0),
        ready_replicas=deployment_status.get("readyReplicas", 0),
        selector=selector(name),
        model=model if model is not None else previous.get("model"),
        conditions=kstatus_conditions(previous, generation, verdict, now),
    )
    dumped: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True)
    return dumped
