"""The checked-in CRD is generated from the pydantic spec and is a valid structural CRD."""

from typing import Any

import yaml

from modelplane_operator import names
from modelplane_operator.crd import CRD_PATH, build_crd
from modelplane_operator.yaml_text import dump
from modelplane_testkit.crd_validation import CRD_FILE, REPO, load_crd


def test_checked_in_crd_matches_the_spec_models() -> None:
    assert CRD_FILE == REPO / CRD_PATH
    assert yaml.safe_load(dump(build_crd())) == load_crd(), "run `make crd` and commit the result"


def test_crd_is_well_under_the_size_limit() -> None:
    assert CRD_FILE.stat().st_size < 64 * 1024


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += _walk(schema[key], f"{path}[{key}]")
    return nodes


def test_schema_is_structural() -> None:
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        assert "$ref" not in node, path
        assert "nullable" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        assert not ("properties" in node and "additionalProperties" in node), path
    # CEL cost estimation needs bounded strings wherever a rule reads one.
    for path, node in _walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if "matches(" in rule["rule"] and node.get("type") == "string":
                assert "maxLength" in node, f"{path}: CEL on an unbounded string"


def test_crd_shape() -> None:
    crd = load_crd()
    spec = crd["spec"]
    version = spec["versions"][0]
    assert crd["metadata"]["name"] == "modeldeployments.modelplane.io"
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "URL", "Replicas", "GPU", "Age"]
    assert spec["names"]["shortNames"] == list(names.SHORT_NAMES)
    assert spec["names"]["categories"] == ["modelplane"]
    schema = version["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]["properties"]
    assert {
        "observedGeneration",
        "url",
        "replicas",
        "readyReplicas",
        "selector",
        "model",
        "conditions",
    } <= set(status)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert set(conditions["items"]["required"]) == {
        "type",
        "status",
        "lastTransitionTime",
        "reason",
    }
