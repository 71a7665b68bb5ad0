"""Sample ModelDeployments, loaded from manifests/samples and built in code."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "manifests" / "samples"
SAMPLE_FILES = sorted(SAMPLES_DIR.glob("*.yaml"))


def load_sample(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def minimal(**spec: Any) -> dict[str, Any]:
    """A valid ModelDeployment; keyword arguments replace top-level spec fields."""
    obj: dict[str, Any] = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "demo", "namespace": "models"},
        "spec": {"model": {"uri": "s3://bucket/model.onnx"}},
    }
    obj["spec"].update(copy.deepcopy(spec))
    return obj
