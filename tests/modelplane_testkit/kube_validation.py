"""Validate Kubernetes objects against the official schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from modelplane_testkit.pod_security import pod_spec_of, restricted_violations

OLDEST_VERSION = "1.29.0"
NEWEST_VERSION = kubernetes_validate.latest_version()
VERSIONS = (OLDEST_VERSION, NEWEST_VERSION)
# Kinds from other projects' CRDs: no official schema to check them against.
FOREIGN_API_GROUPS = ("monitoring.coreos.com/",)


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{obj.get('kind')}/{obj['metadata'].get('name')} {path}: {exc.message}"]
    return []


def problems_in(objects: list[dict[str, Any]]) -> list[str]:
    """Schema errors at the oldest and newest Kubernetes, Pod Security breaches, long names."""
    problems: list[str] = []
    for obj in objects:
        if not obj["apiVersion"].startswith(FOREIGN_API_GROUPS):
            for version in VERSIONS:
                problems += [f"k8s {version}: {e}" for e in schema_errors(obj, version)]
        pod = pod_spec_of(obj)
        if pod is not None:
            problems += [f"pod security: {v}" for v in restricted_violations(pod)]
        if len(obj["metadata"]["name"]) > 63:
            problems.append(f"{obj['kind']} name longer than 63 characters")
    return problems
