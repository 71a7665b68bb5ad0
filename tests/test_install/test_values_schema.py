"""values.schema.json turns wrong values away before anything renders, naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_testkit import helm

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicas": 2}, "additional properties 'replicas'"),
    "unknown nested key": ({"operator": {"imagee": {}}}, "/operator"),
    "typo in metrics": ({"metrics": {"serviceMonitors": {}}}, "/metrics"),
    "watchNamespaces as a string": (
        {"operator": {"watchNamespaces": "team-a"}},
        "/operator/watchNamespaces",
    ),
    "namespace not a DNS label": (
        {"operator": {"watchNamespaces": ["Team_A"]}},
        "/operator/watchNamespaces/0",
    ),
    "duplicate namespaces": (
        {"operator": {"watchNamespaces": ["a", "a"]}},
        "/operator/watchNamespaces",
    ),
    "log format": ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    "pull policy": (
        {"operator": {"image": {"pullPolicy": "Sometimes"}}},
        "/operator/image/pullPolicy",
    ),
    "empty image repository": (
        {"operator": {"image": {"repository": ""}}},
        "/operator/image/repository",
    ),
    "cpu request not a quantity": (
        {"runtime": {"defaultCpuRequest": "2 cores"}},
        "/runtime/defaultCpuRequest",
    ),
    "memory as a number": (
        {"runtime": {"defaultMemoryRequest": 2048}},
        "/runtime/defaultMemoryRequest",
    ),
    "operator memory limit": (
        {"operator": {"resources": {"limits": {"memory": "1Gb"}}}},
        "/operator/resources/limits/memory",
    ),
    "startup timeout too short": (
        {"runtime": {"startupTimeoutSeconds": 5}},
        "/runtime/startupTimeoutSeconds",
    ),
    "startup timeout as text": (
        {"runtime": {"startupTimeoutSeconds": "10m"}},
        "/runtime/startupTimeoutSeconds",
    ),
    "metrics on the liveness port": ({"metrics": {"port": 8080}}, "/metrics/port"),
    "privileged metrics port": ({"metrics": {"port": 80}}, "/metrics/port"),
    "metrics switch as a string": ({"metrics": {"enabled": "yes"}}, "/metrics/enabled"),
    "pull secrets as plain names": ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
    "toleration operator": (
        {"operator": {"tolerations": [{"key": "k", "operator": "Is"}]}},
        "/operator/tolerations/0/operator",
    ),
    "node selector value not a string": (
        {"operator": {"nodeSelector": {"gpu": True}}},
        "/operator/nodeSelector/gpu",
    ),
    "scrape interval": (
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        "/metrics/serviceMonitor/interval",
    ),
    "typo in monitoring": ({"monitoring": {"podMonitors": {}}}, "/monitoring"),
    "pod monitor interval": (
        {"monitoring": {"podMonitor": {"interval": "often"}}},
        "/monitoring/podMonitor/interval",
    ),
    "error ratio over one": (
        {"monitoring": {"rules": {"errorRatio": 5}}},
        "/monitoring/rules/errorRatio",
    ),
    "latency target of zero": (
        {"monitoring": {"rules": {"p99LatencySeconds": 0}}},
        "/monitoring/rules/p99LatencySeconds",
    ),
    "latency target as a duration": (
        {"monitoring": {"rules": {"p99LatencySeconds": "500ms"}}},
        "/monitoring/rules/p99LatencySeconds",
    ),
    "alerts without the operator's metrics": (
        {"metrics": {"enabled": False}, "monitoring": {"rules": {"enabled": True}}},
        "/metrics/enabled",
    ),
    "dashboard namespace": (
        {"monitoring": {"dashboards": {"namespace": "Grafana"}}},
        "/monitoring/dashboards/namespace",
    ),
}


@pytest.mark.parametrize(("values", "names"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_rejected_naming_the_key(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmError) as rejected:
        helm.template(values)
    message = str(rejected.value)
    assert "values don't meet the specifications of the schema" in message, message
    assert names in message, message
