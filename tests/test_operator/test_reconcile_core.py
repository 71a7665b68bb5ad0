"""The reconcile without kopf or HTTP: a fake cluster view and a recording API, table-driven
by what the cluster holds and what the API answers."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelplane_operator.config import OperatorConfig
from modelplane_operator.kube import ApiError
from modelplane_operator.reconcile import ClusterView, RetryLater, SpecRejected, reconcile
from modelplane_operator.status import status_patch
from test_operator.samples import minimal

Obj = dict[str, Any]
NOW = "2026-01-01T00:00:00Z"


@dataclass
class RecordingApi:
    """The operator's API surface, in memory: what was written, and an optional refusal."""

    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    statuses: list[Obj] = field(default_factory=list)
    refuse_with: int | None = None

    def apply(self, obj: Obj, *, manager: str | None = None, force: bool = True) -> Obj:
        if self.refuse_with is not None:
            raise ApiError(self.refuse_with, "refused by the test")
        self.writes.append(f"apply {obj['kind']}")
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(len(self.writes))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.writes.append(f"delete {kind}")
        return self.objects.pop((kind, name), None) is not None

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        self.statuses.append(status)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get((kind, name))


def _body(**spec: Any) -> Obj:
    body = minimal(**spec)
    body["metadata"].update(uid="uid-1", generation=1)
    return body


def _view(api: RecordingApi) -> ClusterView:
    def lookup(kind: str, namespace: str, name: str) -> Obj | None:
        return api.objects.get((kind, name))

    return ClusterView(child=lookup, cached=lookup, pods=lambda namespace, name: [])


def _run(api: RecordingApi, body: Obj) -> Any:
    return reconcile(body, api, OperatorConfig(), _view(api), now=lambda: NOW)  # type: ignore[arg-type]


def _ready(api: RecordingApi) -> Obj:
    return next(c for c in api.statuses[-1]["conditions"] if c["type"] == "Ready")


def test_first_reconcile_applies_each_child_then_nothing() -> None:
    api = RecordingApi()
    body = _body(autoscaling={"minReplicas": 2, "maxReplicas": 4})
    _run(api, body)
    assert api.writes == [
        "apply Deployment",
        "apply Service",
        "apply HorizontalPodAutoscaler",
        "apply PodDisruptionBudget",
        "apply ConfigMap",
    ]
    body["status"] = api.statuses[-1]
    api.writes.clear()
    result = _run(api, body)
    assert api.writes == []
    assert result.writes == 0


def test_optional_children_no_longer_rendered_are_deleted() -> None:
    api = RecordingApi()
    _run(api, _body(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    for obj in api.objects.values():  # as the API server would record the owner
        obj["metadata"]["ownerReferences"] = [{"uid": "uid-1", "controller": True}]
    api.writes.clear()
    _run(api, _body(replicas=1))
    assert sorted(w for w in api.writes if w.startswith("delete")) == [
        "delete HorizontalPodAutoscaler",
        "delete PodDisruptionBudget",
    ]


def test_an_invalid_spec_writes_only_its_status() -> None:
    api = RecordingApi()
    with pytest.raises(SpecRejected) as rejected:
        _run(api, _body(replicas=-1))
    assert rejected.value.reason == "InvalidSpec"
    assert api.writes == []
    assert _ready(api)["reason"] == "InvalidSpec"
    assert "spec.replicas" in _ready(api)["message"]


def test_a_child_in_the_way_is_never_written() -> None:
    api = RecordingApi()
    api.objects[("Service", "demo")] = {"kind": "Service", "metadata": {"name": "demo"}}
    with pytest.raises(RetryLater):
        _run(api, _body())
    assert api.writes == []
    assert _ready(api)["reason"] == "ChildNotOwned"


# (API status, what the reconcile raises, the status reason)
REFUSALS = [
    (403, RetryLater, "Forbidden"),  # RBAC or admission: fixed without a spec change
    (401, RetryLater, "Forbidden"),
    (422, SpecRejected, "ChildRejected"),  # the rendered child itself is refused
    (409, RetryLater, None),  # conflicts and throttling: retried, status unchanged
    (429, RetryLater, None),
    (500, RetryLater, "ApplyFailed"),  # may persist ("range is full"): retried, and said
    (503, RetryLater, "ApplyFailed"),
]


@pytest.mark.parametrize(("code", "raised", "reason"), REFUSALS)
def test_refusals_by_class(code: int, raised: type[Exception], reason: str | None) -> None:
    api = RecordingApi(refuse_with=code)
    with pytest.raises(raised):
        _run(api, _body())
    if reason is None:
        assert api.statuses == []
    else:
        assert _ready(api)["reason"] == reason
        reconciling = next(c for c in api.statuses[-1]["conditions"] if c["type"] == "Reconciling")
        assert reconciling["status"] == ("True" if reason == "ApplyFailed" else "False")


def test_a_status_field_that_goes_away_is_nulled_in_the_patch() -> None:
    """A merge patch keeps what it does not name; the status must not keep stale fields."""
    previous = {"model": {"uri": "s3://b/m.onnx", "cache": "hit"}, "url": "http://x"}
    new = {"model": {"uri": "s3://b/m.onnx"}, "replicas": 1}
    assert status_patch(previous, new) == {
        "model": {"uri": "s3://b/m.onnx", "cache": None},
        "url": None,
        "replicas": 1,
    }
