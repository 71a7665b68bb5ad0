"""What the API server itself accepts and refuses: the CRD, the samples, the invalid
catalogue, the chart and install.yaml. The offline checks must agree on every case."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_testkit import helm
from modelplane_testkit.control_plane import ApiServer, KubectlError
from modelplane_testkit.crd_validation import load_crd, validate_against_crd
from modelplane_testkit.operator_harness import wait_for
from modelplane_testkit.real_cluster import ApiRefused, RealCluster
from modelplane_testkit.structural_schema import structural_errors
from test_e2e.conftest import helm_install, start_or_skip
from test_operator.samples import SAMPLE_FILES, load_sample, minimal
from test_operator.test_spec_validation import INVALID, Mutation

NS = "catalogue"


def _md(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": namespace}
    return obj


def test_crd_and_every_sample_are_accepted(installed: ApiServer, admin: RealCluster) -> None:
    admin.namespace("models")
    for path in SAMPLE_FILES:
        sample = load_sample(path)
        created = admin.create("modeldeployments", sample)
        assert created["spec"]["model"]["uri"] == sample["spec"]["model"]["uri"]
        admin.delete("modeldeployments", "models", sample["metadata"]["name"])


@pytest.mark.parametrize(
    ("mutate", "field"), [(m, f) for _, m, f in INVALID], ids=[case for case, _, _ in INVALID]
)
def test_the_invalid_catalogue_is_refused_naming_the_field(
    installed: ApiServer, admin: RealCluster, mutate: Mutation, field: str
) -> None:
    admin.namespace(NS)
    obj = _md("bad")
    mutate(obj)
    with pytest.raises(ApiRefused) as refused:
        admin.create("modeldeployments", copy.deepcopy(obj))
    # 422 for schema and CEL failures, 400 for unknown fields (strict decoding).
    assert refused.value.status in {400, 422}, refused.value.body
    causes = [c.get("field", "") + ": " + c.get("message", "") for c in _causes(refused.value)]
    assert any(field in cause for cause in causes), causes
    # The offline check (what CI runs) refuses it too, naming the same field.
    offline = validate_against_crd(obj)
    assert any(field in problem for problem in offline), offline


def _causes(refused: ApiRefused) -> list[dict[str, Any]]:
    causes: list[dict[str, Any]] = refused.body.get("details", {}).get("causes", [])
    return causes or [{"field": "", "message": refused.body.get("message", "")}]


def test_replicas_of_an_autoscaled_model_cannot_be_scaled(
    installed: ApiServer, admin: RealCluster
) -> None:
    """`kubectl scale` goes through /scale; while the HPA owns replicas it is refused."""
    admin.namespace(NS)
    admin.create(
        "modeldeployments", _md("scaled", autoscaling={"minReplicas": 2, "maxReplicas": 8})
    )
    with pytest.raises(KubectlError, match="replicas cannot change while autoscaling is set"):
        installed.kubectl("scale", "md", "scaled", "-n", NS, "--replicas=5")
    admin.create("modeldeployments", _md("fixed", replicas=1))
    installed.kubectl("scale", "md", "fixed", "-n", NS, "--replicas=3")
    scale = admin.get("modeldeployments", NS, "fixed", sub="scale")
    assert scale is not None
    assert scale["spec"]["replicas"] == 3
    for name in ("scaled", "fixed"):
        admin.delete("modeldeployments", NS, name)


def test_kubectl_explain_documents_the_fields(installed: ApiServer) -> None:
    explained = installed.kubectl("explain", "modeldeployment.spec.runtime.batching")
    assert "<no description>" not in explained
    assert "maxLatencyMs" in explained
    assert "Most rows in one onnxruntime run" in explained


def _bad_schemas() -> list[tuple[str, dict[str, Any]]]:
    """CRDs a real API server refused during development, each with one defect."""
    broken: list[tuple[str, dict[str, Any]]] = []
    crd = load_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    surge = schema["properties"]["spec"]["properties"]["rollout"]["properties"]["maxSurge"]
    surge["anyOf"][0]["minimum"] = 0
    broken.append(("bound-inside-int-or-string", crd))
    crd = load_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"][
        "description"
    ] = "metadata"
    broken.append(("metadata-with-description", crd))
    return broken


@pytest.mark.parametrize(("case", "crd"), _bad_schemas(), ids=[c for c, _ in _bad_schemas()])
def test_the_offline_structural_check_agrees_with_the_api_server(
    installed: ApiServer, case: str, crd: dict[str, Any], tmp_path: Path
) -> None:
    # Another group: a dry run of a new CRD, never a change to the installed one.
    crd["spec"]["group"] = "probe.modelplane.io"
    crd["metadata"]["name"] = "modeldeployments.probe.modelplane.io"
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(crd))
    with pytest.raises(KubectlError) as refused:
        installed.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(path))
    offline = structural_errors(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert offline
    for problem in offline:
        assert problem in str(refused.value), (problem, str(refused.value))


def test_printer_columns(installed: ApiServer, admin: RealCluster) -> None:
    admin.namespace(NS)
    admin.create("modeldeployments", _md("columns", resources={"gpu": {"count": 1}}))
    table = installed.kubectl("get", "md", "columns", "-n", NS)
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME", "READY", "REASON", "URL", "REPLICAS", "GPU", "ACCESS", "AGE"
    ]  # fmt: skip
    assert "Restricted" in row.split()  # the default, written in by the API server
    assert row.split()[0] == "columns"
    assert "1" in row.split()
    admin.delete("modeldeployments", NS, "columns")


def test_namespaced_helm_install(installed: ApiServer, admin: RealCluster) -> None:
    """A second release watching one namespace: Roles there, no ClusterRole."""
    admin.namespace("team-a")
    helm_install(installed, "scoped", {"operator.watchNamespaces": ["team-a"]})
    roles = installed.kubectl("get", "role", "-n", "team-a", "-o", "name")
    assert "role.rbac.authorization.k8s.io/scoped-modelplane" in roles
    clusterroles = installed.kubectl("get", "clusterrole", "-o", "name")
    assert "scoped-modelplane" not in clusterroles


@pytest.fixture
def fresh_server(tmp_path: Path) -> Any:
    yield from start_or_skip(tmp_path / "fresh", fresh=True)


def test_install_yaml_applies_server_side(fresh_server: ApiServer) -> None:
    out = fresh_server.kubectl("apply", "--server-side", "-f", str(helm.INSTALL_YAML))
    assert "customresourcedefinition.apiextensions.k8s.io/modeldeployments.modelplane.io" in out
    assert out.count("serverside-applied") == len(
        [o for o in yaml.safe_load_all(helm.INSTALL_YAML.read_text()) if o]
    )
    # Applied again, nothing changes and nothing conflicts.
    again = fresh_server.kubectl("apply", "--server-side", "-f", str(helm.INSTALL_YAML))
    assert "serverside-applied" in again
    labels = fresh_server.kubectl(
        "get", "ns", helm.INSTALL_NAMESPACE, "-o", "jsonpath={.metadata.labels}"
    )
    assert '"pod-security.kubernetes.io/enforce":"restricted"' in labels


SHARED_CRDS = helm.REPO.parent / "shared" / "third-party-crds"


def test_the_charts_service_monitor_meets_the_real_crd(installed: ApiServer) -> None:
    """The Prometheus Operator's own CRD judges the ServiceMonitor the chart renders."""
    crds = SHARED_CRDS / "prometheus-operator-v0.93.0"
    if not crds.is_dir():
        pytest.skip(f"no third-party CRDs at {crds}")
    installed.kubectl(
        "apply", "--server-side", "-f", str(crds / "monitoring.coreos.com_servicemonitors.yaml")
    )
    installed.wait_established("servicemonitors.monitoring.coreos.com", timeout=30)
    # helm maps kinds through discovery, which may list a new CRD a moment after it is
    # established.
    wait_for(
        lambda: (
            "servicemonitors"
            in installed.kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name")
        ),
        "discovery to list ServiceMonitor",
    )
    values = {
        "metrics.serviceMonitor.enabled": True,
        "metrics.serviceMonitor.labels": {"team": "ml"},
    }
    helm_install(installed, "monitored", values)
    monitors = installed.kubectl("get", "servicemonitors", "-A", "-o", "name")
    assert "servicemonitor.monitoring.coreos.com/monitored-modelplane" in monitors
