"""The Argo CD health check (Lua) on statuses the operator itself computes.

Lua 5.1 (lupa), as Argo CD's gopher-lua speaks it. The cases come from
``compute_status``, so the script is held to what the operator really writes;
the upstream-format ``health_test.yaml`` beside the script is run too.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from modelplane_operator.consumers import consumer_conditions
from modelplane_operator.status import Problem, compute_status

REPO = Path(__file__).resolve().parents[2]
CHECK_DIR = REPO / "manifests" / "argocd" / "modelplane.io" / "ModelDeployment"
Obj = dict[str, Any]
NOW = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)


def argocd_health(obj: Obj) -> Obj:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    script = CHECK_DIR.joinpath("health.lua").read_text()
    check = runtime.eval(f"function(obj)\n{script}\nend")
    result = check(_to_lua(runtime, obj))
    return {"status": result["status"], "message": result["message"]}


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON to Lua tables, as Argo CD converts objects (arrays 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _deployment(*, replicas: int = 2, available: int = 2, **status: Any) -> Obj:
    return {
        "metadata": {"generation": 3},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
            "conditions": [
                {"type": "Available", "status": "True" if available >= replicas else "False"}
            ],
            **status,
        },
    }


PENDING_POD = {
    "status": {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    }
}
FETCH_FAILED_POD = {
    "status": {
        "initContainerStatuses": [
            {
                "name": "fetch-model",
                "state": {"terminated": {"exitCode": 1, "message": "sha256 mismatch"}},
            }
        ]
    }
}
STUCK = _deployment(
    available=0,
    conditions=[
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "demo-5d4" has timed out progressing.',
        }
    ],
)

CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "available": ({"deployment": _deployment()}, "Healthy", "Available"),
    "rolling out": ({"deployment": _deployment(available=1)}, "Progressing", "1 of 2"),
    "no deployment yet": ({"deployment": None}, "Progressing", "waiting for the Deployment"),
    "gpu pending": (
        {"deployment": _deployment(available=0), "pods": [PENDING_POD]},
        "Progressing",
        "Insufficient nvidia.com/gpu",
    ),
    "fetch failing": (
        {"deployment": _deployment(available=0), "pods": [FETCH_FAILED_POD]},
        "Progressing",
        "ModelFetchFailed: the model fetch failed: sha256 mismatch",
    ),
    "rollout stuck": ({"deployment": STUCK}, "Degraded", "ProgressDeadlineExceeded"),
    "invalid spec": (
        {"problem": Problem("InvalidSpec", "spec.replicas: must be >= 0"), "deployment": None},
        "Degraded",
        "InvalidSpec: spec.replicas",
    ),
    "child in the way": (
        {"problem": Problem("ChildNotOwned", "Service models/demo is not ours")},
        "Degraded",
        "ChildNotOwned",
    ),
    "scaled to zero": (
        {"deployment": _deployment(replicas=0, available=0)},
        "Suspended",
        "ScaledToZero",
    ),
}


def _model_deployment(generation: int, **inputs: Any) -> Obj:
    status = compute_status(
        name="demo",
        generation=3,
        previous={},
        url="http://demo.models.svc.cluster.local",
        model=None,
        deployment=inputs.get("deployment"),
        pods=inputs.get("pods", []),
        problem=inputs.get("problem"),
        now="2026-11-22T12:00:00Z",
    )
    return {"metadata": {"name": "demo", "generation": generation}, "status": status}


@pytest.mark.parametrize(("inputs", "health", "message"), CASES.values(), ids=CASES.keys())
def test_health_follows_the_operators_conditions(inputs: Obj, health: str, message: str) -> None:
    result = argocd_health(_model_deployment(3, **inputs))
    assert result["status"] == health
    assert message in result["message"]


def test_a_status_older_than_the_spec_is_progressing_even_if_ready() -> None:
    result = argocd_health(_model_deployment(4, deployment=_deployment()))
    assert result == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 4",
    }


def test_no_status_yet_is_progressing() -> None:
    result = argocd_health({"metadata": {"name": "demo", "generation": 1}})
    assert result["status"] == "Progressing"


def test_upstream_format_cases() -> None:
    cases = yaml.safe_load(CHECK_DIR.joinpath("health_test.yaml").read_text())["tests"]
    assert len(cases) >= 4
    for case in cases:
        obj = yaml.safe_load(CHECK_DIR.joinpath(case["inputPath"]).read_text())
        assert argocd_health(obj) == case["healthStatus"], case["inputPath"]


def _model_consumer(problem: Problem | None) -> Obj:
    conditions = consumer_conditions({}, 2, problem, "key sha256:0123456789abcdef", NOW)
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions],
        },
    }


@pytest.mark.parametrize(
    ("problem", "health", "message"),
    [
        (None, "Healthy", "KeyIssued: key sha256:0123456789abcdef"),
        (Problem("ModelNotFound", "spec.models names no ..."), "Degraded", "ModelNotFound"),
        (Problem("KeySecretNotOwned", "Secret models/x exists"), "Degraded", "KeySecretNotOwned"),
    ],
)
def test_the_same_check_reads_a_model_consumers_conditions(
    problem: Problem | None, health: str, message: str
) -> None:
    result = argocd_health(_model_consumer(problem))
    assert result["status"] == health
    assert message in result["message"]
