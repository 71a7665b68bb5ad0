"""What counts as a change: quantities by value where Kubernetes canonicalises them, and
fields the operator owns but stopped rendering. A wrong answer is a write per reconcile."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.applier import contains, owned_fields, released

# (live, as the API server returns it; wanted, as rendered; equal?)
QUANTITIES: list[tuple[Any, Any, bool]] = [
    ("500m", "0.5", True),  # the API server writes 0.5 CPU as 500m
    ("1", 1, True),  # YAML reads `cpu: 1` as an int
    ("1Gi", "1024Mi", True),
    ("1Gi", "1Gi", True),
    ("1k", "1000", True),
    ("129e6", "129M", True),
    ("1500m", "1.5", True),
    ("1", "2", False),
    ("1Gi", "1G", False),  # binary and decimal suffixes differ
    ("500m", "0.6", False),
    ("100Mi", "100M", False),
]


@pytest.mark.parametrize(("live", "wanted", "equal"), QUANTITIES)
def test_resource_quantities_compare_by_value(live: Any, wanted: Any, equal: bool) -> None:
    rendered = {"resources": {"requests": {"cpu": wanted}}}
    returned = {"resources": {"requests": {"cpu": live}, "claims": []}}
    assert contains(returned, rendered) is equal


def test_quantity_values_elsewhere_compare_as_text() -> None:
    """An env var "1k" is not "1000": only requests and limits hold quantities."""
    assert not contains(
        {"env": [{"name": "N", "value": "1k"}]}, {"env": [{"name": "N", "value": "1000"}]}
    )
    assert contains({"image": "r:1", "extra": 1}, {"image": "r:1"}), "server defaults are fine"
    assert not contains({"args": ["a", "b"]}, {"args": ["a"]}), "a list is compared whole"


def _managed(manager: str, fields: dict[str, Any], operation: str = "Apply") -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "fieldsV1": fields}


LIVE = {
    "metadata": {
        "managedFields": [
            _managed(
                "modelplane-operator",
                {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:template": {"f:spec": {"f:containers": {'k:{"name":"runtime"}': {}}}},
                    },
                },
            ),
            _managed("kube-controller-manager", {"f:status": {"f:replicas": {}}}, "Update"),
        ]
    }
}


def test_owned_fields_come_from_the_operators_applies_only() -> None:
    assert owned_fields(LIVE) == {
        ("metadata", "labels", "app"),
        ("spec", "replicas"),
        ("spec", "template", "spec", "containers"),
    }


def test_a_field_owned_but_no_longer_rendered_is_released() -> None:
    spec: dict[str, Any] = {"template": {"spec": {"containers": []}}}
    desired = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    assert released(LIVE, desired) == {("spec", "replicas")}
    spec["replicas"] = 3
    assert released(LIVE, desired) == set()
