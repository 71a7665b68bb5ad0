"""Build the CRDs (ModelDeployment, ModelConsumer) from the pydantic spec models.

The generated file under manifests/crds is checked in and is the one source of
truth for the chart and install.yaml; `make crd` regenerates it and a test
fails when it is stale. Run: ``python -m modelplane_operator.crd``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from modelplane_api import names
from modelplane_api.consumer import ModelConsumerSpec, ModelConsumerStatus
from modelplane_api.spec import (
    NAME_PATTERN,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from modelplane_operator.yaml_text import dump

CRD_DIR = Path("manifests/crds")
CRD_PATH = CRD_DIR / f"{names.GROUP}_{names.PLURAL}.yaml"

NAME_RULE = {
    "rule": f"size(self.metadata.name) <= {names.MAX_NAME_LENGTH} && "
    f"self.metadata.name.matches('{NAME_PATTERN}')",
    "message": f"must be a DNS-1035 label of at most {names.MAX_NAME_LENGTH} "
    "characters (lowercase letters, digits and '-', starting with a letter): it names the "
    "Deployment, Service and pod labels",
    # Without it the API server reports the field of a root-level rule as <nil>.
    "fieldPath": ".metadata.name",
    "reason": "FieldValueInvalid",
}


def _flatten(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref, drop the null branch of Optional, and spell const as enum."""
    node = dict(node)
    if "$ref" in node:
        node = {**defs[node.pop("$ref").rsplit("/", 1)[-1]], **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"cannot express {options} in a structural schema")
        node = {**_flatten(options[0], defs), **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None or node.get("additionalProperties") is False:
        node = {
            k: v
            for k, v in node.items()
            if not (k == "default" and v is None)
            and not (k == "additionalProperties" and v is False)
        }
    return node


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON Schema into a Kubernetes structural schema."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in _flatten(node, defs).items():
        if key in {"title", "$defs"}:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in {"items", "additionalProperties"}:
            out[key] = _structural(value, defs)
        elif key == "anyOf":
            out[key] = [_structural(option, defs) for option in value]
        else:
            out[key] = value
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    structural: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return structural


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    description: str,
    spec: type[Any],
    status: type[Any],
    columns: list[dict[str, str]],
    subresources: dict[str, Any],
    name_rule: dict[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{names.GROUP}",
            "labels": {names.LABEL_PART_OF: names.PART_OF},
        },
        "spec": {
            "group": names.GROUP,
            "names": {
                "kind": kind,
                "listKind": kind + "List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(names.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"{names.API_VERSION}",
                                },
                                "kind": {"type": "string", "description": kind},
                                # Nothing but the type and name (the target of the
                                # name rule's fieldPath): the API server refuses any
                                # other schema for metadata, even a description.
                                "metadata": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}},
                                },
                                "spec": _schema_of(spec),
                                "status": _schema_of(status),
                            },
                            "x-kubernetes-validations": [name_rule],
                        }
                    },
                }
            ],
        },
    }


READY = '.status.conditions[?(@.type=="Ready")]'
READY_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": READY + ".status"},
    {"name": "Reason", "type": "string", "jsonPath": READY + ".reason"},
]


def build_crd() -> dict[str, Any]:
    return _crd(
        kind=names.KIND,
        plural=names.PLURAL,
        singular=names.SINGULAR,
        short_names=names.SHORT_NAMES,
        description="A model served over the Open Inference Protocol.",
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        columns=[
            *READY_COLUMNS,
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "GPU", "type": "integer", "jsonPath": ".spec.resources.gpu.count"},
            {"name": "Access", "type": "string", "jsonPath": ".spec.access.mode"},
        ],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        name_rule=NAME_RULE,
    )


def build_consumer_crd() -> dict[str, Any]:
    return _crd(
        kind=names.CONSUMER_KIND,
        plural=names.CONSUMER_PLURAL,
        singular=names.CONSUMER_SINGULAR,
        short_names=names.CONSUMER_SHORT_NAMES,
        description="A consumer of the models in its namespace: its key, grants and limits.",
        spec=ModelConsumerSpec,
        status=ModelConsumerStatus,
        columns=[
            *READY_COLUMNS,
            {"name": "Key", "type": "string", "jsonPath": ".status.keys[0].fingerprint"},
            {"name": "Secret", "type": "string", "jsonPath": ".status.keySecretName"},
        ],
        subresources={"status": {}},
        name_rule={
            **NAME_RULE,
            "message": f"must be a DNS-1035 label of at most {names.MAX_NAME_LENGTH} "
            "characters (lowercase letters, digits and '-', starting with a letter): it is a "
            "metrics label value and names the key Secret",
        },
    )


CRDS = {
    CRD_DIR / f"{names.GROUP}_{names.PLURAL}.yaml": build_crd,
    CRD_DIR / f"{names.GROUP}_{names.CONSUMER_PLURAL}.yaml": build_consumer_crd,
}


def main() -> None:
    """Write every CRD under the directory given (the repository's manifests/crds)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CRD_DIR
    for path, build in CRDS.items():
        (target / path.name).write_text(
            "# Generated from api/modelplane_api by `make crd`. Do not edit.\n" + dump(build())
        )


if __name__ == "__main__":
    main()
