"""Validate Kubernetes objects against the official schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

OLDEST_VERSION = "1.29.0"
NEWEST_VERSION = kubernetes_validate.latest_version()
VERSIONS = (OLDEST_VERSION, NEWEST_VERSION)


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{obj.get('kind')}/{obj['metadata'].get('name')} {path}: {exc.message}"]
    return []
