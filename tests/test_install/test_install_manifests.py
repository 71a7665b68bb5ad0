"""One source per artefact: the CRD from manifests/crds, install.yaml from the chart."""

from __future__ import annotations

from typing import Any

import yaml

from modelplane_testkit import helm
from modelplane_testkit.kube_validation import problems_in


def test_chart_crds_are_byte_identical_to_manifests() -> None:
    assert sorted(p.name for p in (helm.CHART / "crds").iterdir()) == sorted(
        p.name for p in helm.CRD_SOURCES
    )
    for source in helm.CRD_SOURCES:
        assert (helm.CHART / "crds" / source.name).read_bytes() == source.read_bytes(), (
            "charts/modelplane/crds is stale: run `make manifests`"
        )


def test_install_yaml_is_generated_from_the_chart() -> None:
    assert helm.INSTALL_YAML.read_text() == helm.install_yaml(), (
        "manifests/install/install.yaml is stale: run `make manifests`"
    )


def test_install_yaml_holds_namespace_crd_rbac_operator_all_valid() -> None:
    objects: list[dict[str, Any]] = [
        o for o in yaml.safe_load_all(helm.INSTALL_YAML.read_text()) if o
    ]
    kinds = [o["kind"] for o in objects]
    # Namespace and CRD first: `kubectl apply` creates objects in file order.
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert set(kinds) >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
    namespace = objects[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]} == {
        helm.INSTALL_NAMESPACE
    }
    assert problems_in(objects) == []
