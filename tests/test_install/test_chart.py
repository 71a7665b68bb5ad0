"""The Helm chart: lint, a matrix of values rendered and validated, its settings, its notes."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from modelplane_api.facts import RUNTIME_UID
from modelplane_api.spec import parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_testkit import helm
from modelplane_testkit.kube_validation import problems_in

Obj = dict[str, Any]

VALUE_MATRIX: dict[str, Obj] = {
    "defaults": {},
    "namespaced-watch": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "operator": {"watchNamespaces": ["team-a"]},
        "monitoring": {
            "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "rules": {"enabled": True, "labels": {"release": "prom"}},
            "dashboards": {"enabled": True, "annotations": {"grafana_folder": "modelplane"}},
        },
    },
    "pull-secrets-and-placement": {
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "podAnnotations": {"example.com/team": "ml-platform"},
            "priorityClassName": "system-cluster-critical",
        },
    },
    "metrics-off-text-logs": {
        "metrics": {"enabled": False},
        "operator": {"logFormat": "text", "image": {"tag": "0.2.0-rc.1"}},
    },
    "runtime-settings": {
        "runtime": {
            "image": "registry.example.com/ml/runtime:1.2.3",
            "gpuImage": "registry.example.com/ml/runtime-gpu:1.2.3",
            "imagePullPolicy": "Always",
            "defaultCpuRequest": "500m",
            "defaultMemoryRequest": "1Gi",
            "modelVolumeSizeLimit": "20Gi",
            "startupTimeoutSeconds": 1200,
            "clusterDomain": "corp.internal",
        }
    },
}


def _of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def _pod_spec(objects: list[Obj]) -> Obj:
    (deployment,) = _of_kind(objects, "Deployment")
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def _container(objects: list[Obj]) -> Obj:
    (container,) = _pod_spec(objects)["containers"]
    found: Obj = container
    return found


def _env(objects: list[Obj]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(objects)["env"]}


@pytest.mark.parametrize("values", VALUE_MATRIX.values(), ids=VALUE_MATRIX.keys())
def test_lint_strict(values: Obj) -> None:
    assert "0 chart(s) failed" in helm.lint(values)


@pytest.mark.parametrize("values", VALUE_MATRIX.values(), ids=VALUE_MATRIX.keys())
def test_every_rendered_object_is_valid_kubernetes_and_pod_security_restricted(
    values: Obj,
) -> None:
    objects = helm.template(values, include_crds=True)
    assert {o["kind"] for o in objects} >= {
        "CustomResourceDefinition",
        "ServiceAccount",
        "Deployment",
    }
    assert problems_in(objects) == []


def test_operator_pod_is_one_replica_recreate_probed_read_only_and_non_root() -> None:
    objects = helm.template()
    (deployment,) = _of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(objects)
    assert container["args"] == [
        "run",
        "-m",
        "modelplane_operator.handlers",
        "--standalone",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 8080,
        "metrics": 9090,
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"]
    assert _pod_spec(objects)["securityContext"]["runAsUser"] == RUNTIME_UID
    (account,) = _of_kind(objects, "ServiceAccount")
    assert _pod_spec(objects)["serviceAccountName"] == account["metadata"]["name"]


def test_watching_all_namespaces_binds_one_cluster_role() -> None:
    objects = helm.template()
    assert [o["kind"] for o in objects if "Role" in o["kind"]] == [
        "ClusterRole",
        "ClusterRoleBinding",
    ]
    (binding,) = _of_kind(objects, "ClusterRoleBinding")
    (account,) = _of_kind(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": helm.INSTALL_NAMESPACE,
        }
    ]


def test_watching_listed_namespaces_grants_roles_there_and_nothing_cluster_wide() -> None:
    objects = helm.template(VALUE_MATRIX["namespaced-watch"])
    assert not _of_kind(objects, "ClusterRole")
    assert not _of_kind(objects, "ClusterRoleBinding")
    assert sorted(o["metadata"]["namespace"] for o in _of_kind(objects, "Role")) == [
        "team-a",
        "team-b",
    ]
    assert sorted(o["metadata"]["namespace"] for o in _of_kind(objects, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    args = _container(objects)["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    # kopf's flags are the one namespace scoping; there is no second filter to agree with.
    assert not [name for name in _env(objects) if "NAMESPACE" in name]


def test_rendered_settings_are_exactly_what_the_operator_reads() -> None:
    env = _env(helm.template(VALUE_MATRIX["runtime-settings"]))
    prefix = OperatorConfig.model_config["env_prefix"]
    known = {prefix + field.upper() for field in OperatorConfig.model_fields}
    assert set(env) <= known, set(env) - known
    config = OperatorConfig.model_validate(
        {name.removeprefix(prefix).lower(): value for name, value in env.items()}
    )
    runtime = VALUE_MATRIX["runtime-settings"]["runtime"]
    assert config.runtime_image == runtime["image"]
    assert config.runtime_gpu_image == runtime["gpuImage"]
    assert config.image_pull_policy == "Always"
    assert config.default_cpu_request == "500m"
    assert config.default_memory_request == "1Gi"
    assert config.model_volume_size_limit == "20Gi"
    assert config.startup_timeout_seconds == 1200
    assert config.cluster_domain == "corp.internal"
    assert config.log_format == "json"
    assert config.metrics_port == 9090


def test_metrics_off_means_no_port_no_service_and_port_zero() -> None:
    objects = helm.template(VALUE_MATRIX["metrics-off-text-logs"])
    assert not _of_kind(objects, "Service")
    assert [p["name"] for p in _container(objects)["ports"]] == ["health"]
    assert _env(objects)["MODELPLANE_OPERATOR_METRICS_PORT"] == "0"
    assert _env(objects)["MODELPLANE_OPERATOR_LOG_FORMAT"] == "text"
    assert _container(objects)["image"] == "ghcr.io/modelplane/operator:0.2.0-rc.1"


def test_service_monitor_scrapes_the_metrics_service_only_when_asked() -> None:
    assert not _of_kind(helm.template(), "ServiceMonitor")
    objects = helm.template(VALUE_MATRIX["service-monitor"])
    (monitor,) = _of_kind(objects, "ServiceMonitor")
    (service,) = _of_kind(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_pull_secrets_and_placement_reach_the_pod() -> None:
    pod = _pod_spec(helm.template(VALUE_MATRIX["pull-secrets-and-placement"]))
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "infra"
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_notes_tell_what_to_apply_next_and_the_example_is_a_valid_model_deployment() -> None:
    text = helm.notes(VALUE_MATRIX["namespaced-watch"])
    assert "kubectl -n modelplane-system rollout status deployment/modelplane" in text
    example = text.split("model.yaml, with a URI your cluster can read:\n", 1)[1]
    example = textwrap.dedent(example.split("\n\n  kubectl apply", 1)[0])
    md = parse_model_deployment(yaml.safe_load(example))
    assert md.namespace == "team-a"
    assert "namespaces team-a, team-b" in text
