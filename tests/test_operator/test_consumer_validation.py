"""ModelConsumer bad input: refused by the CRD (offline, as the API server would) and by
the operator's own parser alike, each naming the field; the samples pass both."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_api.consumer import parse_model_consumer
from modelplane_api.spec import InvalidSpecError
from modelplane_testkit.crd_validation import CONSUMER_CRD_FILE, validate_against_crd
from test_operator.samples import SAMPLES_DIR

CONSUMER_SAMPLES = sorted((SAMPLES_DIR / "consumers").glob("*.yaml"))
VALID: dict[str, Any] = {
    "apiVersion": "modelplane.io/v1alpha1",
    "kind": "ModelConsumer",
    "metadata": {"name": "team-a", "namespace": "models"},
    "spec": {"models": ["sentiment"], "limits": {"requestsPerSecond": 10}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    node = obj
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return obj


@pytest.mark.parametrize("path", CONSUMER_SAMPLES, ids=lambda p: p.stem)
def test_samples_are_valid_for_the_crd_and_the_operator(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert validate_against_crd(obj, crd=CONSUMER_CRD_FILE) == []
    parse_model_consumer(obj)


def test_the_samples_exist() -> None:
    assert len(CONSUMER_SAMPLES) >= 2


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("spec.limits.requestsPerSecond", 0, "requestsPerSecond"),
        ("spec.limits.requestsPerSecond", -5, "requestsPerSecond"),
        ("spec.limits.requestsPerSecond", "10", "requestsPerSecond"),  # looks numeric only
        ("spec.limits.requestsPerSecond", 2.5, "requestsPerSecond"),
        ("spec.limits.burst", 0, "burst"),
        ("spec.limits.rowsPerSecond", -1, "rowsPerSecond"),
        ("spec.models", [], "models"),
        ("spec.models", ["*", "sentiment"], "models"),
        ("spec.models", ["Not_A_Name"], "models"),
        ("spec.key.overlapSeconds", -1, "overlapSeconds"),
        ("spec.key.overlapSeconds", 8 * 24 * 3600, "overlapSeconds"),
        ("spec.key.rotation", "two words", "rotation"),
        ("spec.key.secretName", "Not/A/Name", "secretName"),
        ("spec.key.secret", "x", "secret"),  # unknown field
    ],
)
def test_bad_input_is_refused_by_both_naming_the_field(path: str, value: Any, field: str) -> None:
    obj = _with(path, value)
    crd_problems = validate_against_crd(obj, crd=CONSUMER_CRD_FILE)
    assert any(field in p for p in crd_problems), crd_problems
    with pytest.raises(InvalidSpecError) as rejected:
        parse_model_consumer(obj)
    assert any(field in p for p in rejected.value.problems), rejected.value.problems


def test_an_over_long_name_is_refused_by_the_crd() -> None:
    obj = _with("metadata.name", "a" * 64)
    assert any("metadata.name" in p for p in validate_against_crd(obj, crd=CONSUMER_CRD_FILE))
    with pytest.raises(InvalidSpecError):
        parse_model_consumer(obj)
