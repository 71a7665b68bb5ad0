"""Checks every rendered object must pass; shared by example and property tests."""

from __future__ import annotations

from typing import Any

from modelplane_testkit.kube_validation import VERSIONS, schema_errors
from modelplane_testkit.pod_security import pod_spec_of, restricted_violations


def problems_in(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for obj in objects:
        for version in VERSIONS:
            problems += [f"k8s {version}: {e}" for e in schema_errors(obj, version)]
        pod = pod_spec_of(obj)
        if pod is not None:
            problems += [f"pod security: {v}" for v in restricted_violations(pod)]
        if len(obj["metadata"]["name"]) > 63:
            problems.append(f"{obj['kind']} name longer than 63 characters")
    return problems
