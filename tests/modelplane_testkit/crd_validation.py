"""Validate an object against the CRD offline, the way the API server would.

Order as in the API server: defaults from the schema, then OpenAPI schema
validation (strict: unknown fields rejected, as `kubectl apply` does by
default since 1.27), then the CEL `x-kubernetes-validations` rules (cel-python).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests/crds/modelplane.io_modeldeployments.yaml"
CONSUMER_CRD_FILE = REPO / "manifests/crds/modelplane.io_modelconsumers.yaml"
CRD_FILES = (CRD_FILE, CONSUMER_CRD_FILE)


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


def crd_schema(path: Path = CRD_FILE, version: str | None = None) -> dict[str, Any]:
    versions = load_crd(path)["spec"]["versions"]
    chosen = next((v for v in versions if v["name"] == version), versions[0])
    schema: dict[str, Any] = chosen["schema"]["openAPIV3Schema"]
    return schema


# Upstream CRDs (Gateway API, KEDA, Prometheus Operator), beside the checkout.
THIRD_PARTY_CRDS = REPO.parent / "shared" / "third-party-crds"


def third_party_crd(api_version: str, kind: str) -> Path | None:
    """The upstream CRD file that defines ``kind`` in ``api_version``'s group, if present."""
    return _third_party_index().get((api_version.split("/", maxsplit=1)[0], kind))


@functools.cache
def _third_party_index() -> dict[tuple[str, str], Path]:
    """(group, kind) -> CRD file, read once: the Gateway API CRDs alone are megabytes."""
    index: dict[tuple[str, str], Path] = {}
    for path in sorted(THIRD_PARTY_CRDS.glob("*/*.yaml")):
        spec = load_crd(path).get("spec") or {}
        index[(spec.get("group", ""), (spec.get("names") or {}).get("kind", ""))] = path
    return index


@functools.cache
def _cached_schema(path: Path, version: str | None) -> dict[str, Any]:
    return crd_schema(path, version)


def _strict(schema: Any) -> Any:
    """Unknown fields become errors, except where the schema preserves them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


_CEL = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    """A CEL rule compiled once: the upstream CRDs (Gateway API) carry hundreds."""
    return _CEL.program(_CEL.compile(rule))


def _cel_errors(schema: dict[str, Any], value: Any, path: str, old: Any = None) -> list[str]:
    """CEL rules as the API server runs them; transition rules (oldSelf) only on updates."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        where = (path + rule.get("fieldPath", "")).lstrip(".") or "(root)"
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule["rule"]:
            if old is None:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = _program(rule["rule"]).evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - any CEL failure rejects, as in the API server
            errors.append(f"{where}: rule {rule['rule']!r} failed to evaluate: {exc}")
            continue
        if isinstance(ok, Exception) or not bool(ok):
            errors.append(f"{where}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                before = old.get(key) if isinstance(old, dict) else None
                errors += _cel_errors(sub, value[key], f"{path}.{key}" if path else key, before)
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                errors += _cel_errors(schema["additionalProperties"], item, f"{path}[{key}]")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def validate_against_crd(
    obj: dict[str, Any], old: dict[str, Any] | None = None, crd: Path = CRD_FILE
) -> list[str]:
    """Every problem the API server would report for this object (a ModelDeployment
    unless ``crd`` says otherwise); [] if valid.

    ``old`` is the stored object when this is an update (for transition rules).
    """
    if crd.is_relative_to(THIRD_PARTY_CRDS):  # upstream files never change: parse once
        version = obj.get("apiVersion", "").rpartition("/")[2]
        schema = copy.deepcopy(_cached_schema(crd, version))
    else:
        schema = crd_schema(crd)
    value = apply_defaults(schema, copy.deepcopy(obj))
    if old is not None:
        old = apply_defaults(schema, copy.deepcopy(old))
    strict = _strict(schema)
    # metadata is ObjectMeta, validated by the API server itself; its schema only names name.
    strict["properties"]["metadata"] = schema["properties"]["metadata"]
    validator = jsonschema.Draft7Validator(strict)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
    ]
    if errors:
        return errors  # the API server stops before CEL when the schema fails
    return _cel_errors(schema, value, "", old)
