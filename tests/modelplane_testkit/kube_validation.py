"""Validate Kubernetes objects against the official schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from modelplane_testkit.crd_validation import third_party_crd, validate_against_crd
from modelplane_testkit.pod_security import pod_spec_of, restricted_violations

OLDEST_VERSION = "1.29.0"
NEWEST_VERSION = kubernetes_validate.latest_version()
VERSIONS = (OLDEST_VERSION, NEWEST_VERSION)
# Kinds from other projects' CRDs: no official schema; judged by the upstream CRD
# (../shared/third-party-crds), which must then be there.
FOREIGN_API_GROUPS = (
    "monitoring.coreos.com/",
    "keda.sh/",
    "http.keda.sh/",
    "gateway.networking.k8s.io/",
)


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
        foreign = obj["apiVersion"].startswith(FOREIGN_API_GROUPS)
        crd = third_party_crd(obj["apiVersion"], obj["kind"]) if foreign else None
        if crd is not None:
            problems += [f"{crd.parent.name}: {e}" for e in validate_against_crd(obj, crd=crd)]
        elif not foreign:
            for version in VERSIONS:
                problems += [f"k8s {version}: {e}" for e in schema_errors(obj, version)]
        else:
            problems.append(f"{obj['apiVersion']} {obj['kind']}: no CRD to check it against")
        pod = pod_spec_of(obj)
        if pod is not None:
            problems += [f"pod security: {v}" for v in restricted_violations(pod)]
        if len(obj["metadata"]["name"]) > 63:
            problems.append(f"{obj['kind']} name longer than 63 characters")
    return problems
