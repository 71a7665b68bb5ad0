"""The checked-in CRD is generated from the pydantic spec and is a valid structural CRD."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_api import names
from modelplane_operator.crd import CRD_PATH, CRDS, build_crd
from modelplane_operator.yaml_text import dump
from modelplane_testkit.crd_validation import CONSUMER_CRD_FILE, CRD_FILE, CRD_FILES, REPO, load_crd
from modelplane_testkit.structural_schema import (
    cel_literal_errors,
    field_path_errors,
    structural_errors,
)


def test_checked_in_crds_match_the_spec_models() -> None:
    assert CRD_FILE == REPO / CRD_PATH
    assert {REPO / path for path in CRDS} == set(CRD_FILES)
    for path, build in CRDS.items():
        assert yaml.safe_load(dump(build())) == load_crd(REPO / path), (
            "run `make crd` and commit the result"
        )
    assert build_crd() == CRDS[CRD_PATH]()


@pytest.fixture(params=CRD_FILES, ids=lambda p: p.stem.split("_")[-1])
def crd_file(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_crd_is_well_under_the_size_limit(crd_file: Path) -> None:
    assert crd_file.stat().st_size < 64 * 1024


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += _walk(schema[key], f"{path}[{key}]")
    return nodes


def test_schema_is_structural_by_the_api_servers_rules(crd_file: Path) -> None:
    schema = load_crd(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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
    # helm install on a real API server: "exclusiveMinimum: expected boolean, got &{0}".
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    replicas = schema["properties"]["spec"]["properties"]["replicas"]
    replicas["exclusiveMinimum"] = 0
    assert structural_errors(schema) == [
        "spec.validation.openAPIV3Schema.properties[spec].properties[replicas]"
        ".exclusiveMinimum: Invalid value: expected boolean"
    ]


def test_cel_rules_compile_where_the_api_server_compiles_them(crd_file: Path) -> None:
    """kube-apiserver refused `self.matches('^a\\.b$')`: CEL reads `\\.` as a bad escape."""
    schema = load_crd(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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


def test_every_field_has_a_description(crd_file: Path) -> None:
    """`kubectl explain modeldeployment.spec...` documents every field."""
    schema = load_crd(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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


def test_root_rules_name_their_field(crd_file: Path) -> None:
    """Without fieldPath the API server reports a root rule's field as <nil>."""
    schema = load_crd(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for rule in schema["x-kubernetes-validations"]:
        assert rule.get("fieldPath", "").startswith(".metadata."), rule


def test_schema_shape_the_api_server_needs(crd_file: Path) -> None:
    schema = load_crd(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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
    assert columns == ["Ready", "Reason", "URL", "Replicas", "GPU", "Access", "Age"]
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


def test_consumer_crd_shape() -> None:
    crd = load_crd(CONSUMER_CRD_FILE)
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == names.CONSUMER_CRD_NAME
    assert crd["spec"]["names"]["kind"] == names.CONSUMER_KIND
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "Key", "Secret", "Age"]
    schema = version["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]["properties"]
    assert {"observedGeneration", "keySecretName", "keys", "models", "conditions"} <= set(status)
    # What status may show of a key: never a field that could hold the key itself.
    assert set(status["keys"]["items"]["properties"]) == {"fingerprint", "sha256", "notAfter"}
