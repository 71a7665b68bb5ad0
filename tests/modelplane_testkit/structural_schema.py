"""The API server's structural-schema rules for a CRD, offline.

A port of apiextensions-apiserver's ``schema/validation.go`` (validateStructural)
and the CRD checks that go with it, with its messages and field paths, so that CI
(which has no API server) refuses what a real API server refuses. The real-server
tests (tests/test_e2e) send the same broken schemas to kube-apiserver and compare.
"""

from __future__ import annotations

from typing import Any

ROOT = "spec.validation.openAPIV3Schema"
_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
# What a schema under anyOf/allOf/oneOf/not must leave out to be structural.
_FORBIDDEN_NESTED: tuple[tuple[str, str], ...] = (
    ("type", "must be empty to be structural"),
    ("additionalProperties", "must be undefined to be structural"),
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
    ("x-kubernetes-list-map-keys", "must be empty to be structural"),
    ("x-kubernetes-list-type", "must be undefined to be structural"),
    ("x-kubernetes-map-type", "must be undefined to be structural"),
)


def structural_errors(schema: dict[str, Any]) -> list[str]:
    """Every reason the API server would give for refusing this openAPIV3Schema."""
    errors: list[str] = []
    _node(schema, "root", ROOT, errors)
    return sorted(errors)


def _node(node: dict[str, Any], level: str, path: str, errors: list[str]) -> None:
    kind = node.get("type", "")
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if kind == "array" and "items" not in node:
        errors.append(f"{path}.items: Required value: must be specified")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        # OpenAPI v3.0, as the API server reads it: a flag beside minimum/maximum.
        if bound in node and not isinstance(node[bound], bool):
            errors.append(f"{path}.{bound}: Invalid value: expected boolean")
    if isinstance(node.get("items"), dict):
        _node(node["items"], "item", f"{path}.items", errors)
    for key, sub in node.get("properties", {}).items():
        _node(sub, "field", f"{path}.properties[{key}]", errors)
    extra = node.get("additionalProperties")
    if extra is not None and extra is not True and extra is not False:
        if level == "root":
            errors.append(f"{path}.additionalProperties: Forbidden: must not be used at the root")
        _node(extra, "field", f"{path}.additionalProperties", errors)
    if "properties" in node and isinstance(extra, dict):
        errors.append(
            f"{path}.additionalProperties: Forbidden: additionalProperties and properties "
            "are mutual exclusive"
        )
    if int_or_string and preserve:
        errors.append(
            f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: true: "
            "must be false if x-kubernetes-int-or-string is true"
        )
    if int_or_string and kind:
        errors.append(
            f'{path}.type: Invalid value: "{kind}": '
            "must be empty if x-kubernetes-int-or-string is true"
        )
    if not kind and not int_or_string and not preserve:
        where = {
            "root": "must not be empty at the root",
            "item": "must not be empty for specified array items",
            "field": "must not be empty for specified object fields",
        }[level]
        errors.append(f"{path}.type: Required value: {where}")
    _value_validation(node, path, errors)
    if level == "root":
        if kind and kind != "object":
            errors.append(f'{path}.type: Invalid value: "{kind}": must be object at the root')
        for key in ("kind", "apiVersion"):
            found = node.get("properties", {}).get(key)
            if found is not None and found.get("type") != "string":
                errors.append(
                    f'{path}.properties[{key}].type: Invalid value: "{found.get("type", "")}": '
                    "must be string"
                )
        _root_metadata(node.get("properties", {}).get("metadata"), path, errors)
    _list_map(node, path, errors)


def _value_validation(node: dict[str, Any], path: str, errors: list[str]) -> None:
    skip_any_of = node.get("anyOf") == _INT_OR_STRING_ANY_OF
    all_of = node.get("allOf", [])
    skip_first_any_of = bool(all_of) and all_of[0].get("anyOf") == _INT_OR_STRING_ANY_OF
    if not skip_any_of:
        for index, sub in enumerate(node.get("anyOf", [])):
            _nested(sub, f"{path}.anyOf[{index}]", errors, skip_any_of=False)
    for index, sub in enumerate(all_of):
        _nested(sub, f"{path}.allOf[{index}]", errors, skip_any_of=skip_first_any_of and index == 0)
    for index, sub in enumerate(node.get("oneOf", [])):
        _nested(sub, f"{path}.oneOf[{index}]", errors, skip_any_of=False)
    if isinstance(node.get("not"), dict):
        _nested(node["not"], f"{path}.not", errors, skip_any_of=False)


def _nested(node: dict[str, Any], path: str, errors: list[str], *, skip_any_of: bool) -> None:
    for key, message in _FORBIDDEN_NESTED:
        if node.get(key) not in (None, False, [], ""):
            errors.append(f"{path}.{key}: Forbidden: {message}")
    if "x-kubernetes-validations" in node and not path.rsplit(".", 1)[-1].startswith("allOf"):
        errors.append(f"{path}.x-kubernetes-validations: Forbidden: must be empty to be structural")
    if "metadata" in node.get("properties", {}):
        errors.append(
            f"{path}.properties[metadata]: Forbidden: must not be specified in a nested context"
        )
    if skip_any_of:
        node = {k: v for k, v in node.items() if k != "anyOf"}
    _value_validation(node, path, errors)
    if isinstance(node.get("items"), dict):
        _nested(node["items"], f"{path}.items", errors, skip_any_of=False)
    for key, sub in node.get("properties", {}).items():
        _nested(sub, f"{path}.properties[{key}]", errors, skip_any_of=False)


def _root_metadata(metadata: dict[str, Any] | None, path: str, errors: list[str]) -> None:
    if metadata is None:
        return
    # Not even a description: the API server compares the rest with an empty schema.
    rest = {k: v for k, v in metadata.items() if k not in {"type", "default"}}
    properties = set(rest.pop("properties", {}))
    if rest or not properties <= {"name", "generateName"}:
        errors.append(
            f"{path}.properties[metadata]: Forbidden: must not specify anything other than "
            "name and generateName, but metadata is implicitly specified"
        )


def _list_map(node: dict[str, Any], path: str, errors: list[str]) -> None:
    if node.get("x-kubernetes-list-type") != "map":
        return
    items = node.get("items", {})
    required = set(items.get("required", []))
    for key in node.get("x-kubernetes-list-map-keys", []):
        field = items.get("properties", {}).get(key)
        if field is None:
            errors.append(
                f'{path}.x-kubernetes-list-map-keys: Invalid value: "{key}": '
                "entries must all be names of item properties"
            )
        elif key not in required and "default" not in field:
            errors.append(
                f"{path}.items.properties[{key}]: Required value: "
                "all map keys must be required or have a default value"
            )


# CEL's escapes in a quoted (not raw) string; anything else after a backslash is a
# syntax error for the API server ("token recognition error"), though cel-python lets it by.
_CEL_ESCAPES = set("\\'\"?abfnrtv`xuU01234567")


def cel_literal_errors(rule: str) -> list[str]:
    """Invalid escapes in the CEL string literals of ``rule``."""
    errors: list[str] = []
    index = 0
    while index < len(rule):
        char = rule[index]
        if char not in "'\"":
            index += 1
            continue
        raw = index > 0 and rule[index - 1] in "rR"
        end = index + 1
        while end < len(rule) and rule[end] != char:
            if rule[end] == "\\":
                if not raw and (end + 1 >= len(rule) or rule[end + 1] not in _CEL_ESCAPES):
                    errors.append(f"invalid escape at {end} in {rule!r}")
                end += 1
            end += 1
        index = end + 1
    return errors


def field_path_errors(schema: dict[str, Any]) -> list[str]:
    """Rules whose fieldPath names no property of the schema they sit on."""
    errors: list[str] = []
    for node in _nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            target: Any = node
            for part in rule.get("fieldPath", "").split(".")[1:]:
                target = (target or {}).get("properties", {}).get(part)
            if target is None:
                errors.append(f"{rule['fieldPath']}: must be a valid path")
    return errors


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for sub in node.get("properties", {}).values():
        found += _nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _nodes(node[key])
    return found
