"""The checked-in CRD is generated from the pydantic spec and is a valid structural CRD."""

from typing import Any

import yaml

from modelplane_api import names
from modelplane_operator.crd import CRD_PATH, build_crd
from modelplane_operator.yaml_text import dump
from modelplane_testkit.crd_validation import CRD_FILE, REPO, load_crd
from modelplane_testkit.structural_schema import (
    cel_literal_errors,
    field_path_errors,
    structural_errors,
)


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


def test_schema_is_structural_by_the_api_servers_rules() -> None:
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_errors(schema) == []


def test_the_structural_check_refuses_what_the_api_server_refused() -> None:
    """The int-or-string field a real kube-apiserver refused (issue 11, finding 1)."""
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    surge = schema["properties"]["spec"]["properties"]["rollout"]["properties"]["maxSurge"]
    surge["anyOf"][0]["minimum"] = 0
    where = (
        "spec.validation.openAPIV3Schema.properties[spec].properties[rollout]"
        ".properties[maxSurge].anyOf"
    )
    assert structural_errors(schema) == [
        f"{where}[0].type: Forbidden: must be empty to be structural",
        f"{where}[1].type: Forbidden: must be empty to be structural",
    ]
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"]["description"] = "the object's metadata"
    assert structural_errors(schema) == [
        "spec.validation.openAPIV3Schema.properties[metadata]: Forbidden: must not specify "
        "anything other than name and generateName, but metadata is implicitly specified"
    ]


def test_cel_rules_compile_where_the_api_server_compiles_them() -> None:
    """kube-apiserver refused `self.matches('^a\\.b$')`: CEL reads `\\.` as a bad escape."""
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [
        r["rule"] for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])
    ]
    assert rules
    assert [e for rule in rules for e in cel_literal_errors(rule)] == []
    assert cel_literal_errors("self.matches('^a\\.b$')"), "the check must catch a bad escape"
    assert not cel_literal_errors("self.matches('^a\\\\.b$')")
    assert not cel_literal_errors("self.matches(r'^a\\.b$')")


def test_every_field_path_names_a_field_of_the_schema() -> None:
    """kube-apiserver refused fieldPath .metadata.name while metadata had no properties."""
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert field_path_errors(schema) == []
    del schema["properties"]["metadata"]["properties"]
    assert field_path_errors(schema) == [".metadata.name: must be a valid path"]


def test_every_field_has_a_description() -> None:
    """`kubectl explain modeldeployment.spec...` documents every field."""
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        path
        for path, node in _walk(schema)
        # metadata: the API server refuses any schema there but its type (and name).
        if path
        and not path.startswith(".metadata")
        and "[" not in path.rsplit(".", 1)[-1]
        and not node.get("description")
    ]
    assert missing == []


def test_root_rules_name_their_field() -> None:
    """Without fieldPath the API server reports a root rule's field as <nil>."""
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for rule in schema["x-kubernetes-validations"]:
        assert rule.get("fieldPath", "").startswith(".metadata."), rule


def test_schema_shape_the_api_server_needs() -> None:
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
