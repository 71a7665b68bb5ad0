"""Autoscaling on KEDA, scale to zero and canaries, as rendered: what each spec field
becomes, and what the observed canary state changes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelplane_api.spec import InvalidSpecError, ModelDeployment, parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import (
    Observed,
    Unrenderable,
    pods_of,
    render_children,
    revision,
    service_host,
    service_url,
)
from modelplane_testkit.crd_validation import validate_against_crd
from test_operator.samples import minimal

PROMETHEUS = "http://prometheus.monitoring:9090"
CONFIG = OperatorConfig(prometheus_url=PROMETHEUS)
CANARY_MODEL = {"uri": "s3://bucket/v2.onnx"}
ROUTE = {"gateway": {"name": "models", "namespace": "gateways"}}


def _md(**spec: Any) -> ModelDeployment:
    return parse_model_deployment(minimal(**spec))


def _by_kind(md: ModelDeployment, observed: Observed | None = None) -> dict[str, Any]:
    objects = render_children(md, CONFIG, observed)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def _keda(**scaling: Any) -> ModelDeployment:
    return _md(autoscaling={"engine": "keda", "maxReplicas": 4, **scaling})


def test_keda_owns_the_count_through_a_scaled_object_on_pending_requests() -> None:
    objects = _by_kind(_keda(minReplicas=1, target=6))
    assert "HorizontalPodAutoscaler/demo" not in objects
    assert "replicas" not in objects["Deployment/demo"]["spec"]  # never fought over
    scaled = objects["ScaledObject/demo"]["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo",
    }
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 4)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"  # per pod, as the HPA's Pods metric
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS
    assert trigger["metadata"]["threshold"] == "6"
    assert "modelplane_pending_requests{" in trigger["metadata"]["query"]
    assert "HTTPScaledObject/demo" not in objects


def test_the_pod_matcher_takes_the_models_pods_and_not_its_canarys() -> None:
    md = _md(route=ROUTE, canary={"weight": 10, "model": CANARY_MODEL})
    pattern = re.search(r'pod=~"([^"]+)"', pods_of(md))
    assert pattern is not None
    assert re.fullmatch(pattern[1], "demo-6d4cf56db6-x7k2p")
    assert not re.fullmatch(pattern[1], "demo-canary-6d4cf56db6-x7k2p")
    assert not re.fullmatch(pattern[1], "demo2-6d4cf56db6-x7k2p")


def test_keda_on_cpu_needs_no_prometheus() -> None:
    md = _keda(metric="cpu", target=60)
    (trigger,) = _by_kind(md)["ScaledObject/demo"]["spec"]["triggers"]
    assert trigger == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}
    render_children(md, OperatorConfig(prometheus_url=None))  # no Unrenderable


def test_keda_on_pending_requests_without_prometheus_says_what_to_set() -> None:
    with pytest.raises(Unrenderable, match=r"prometheus\.url") as raised:
        render_children(_keda(), OperatorConfig(prometheus_url=None))
    assert raised.value.reason == "PrometheusNotConfigured"


def test_hpa_stays_the_default_engine() -> None:
    objects = _by_kind(_md(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    assert "ScaledObject/demo" not in objects
    metric = objects["HorizontalPodAutoscaler/demo"]["spec"]["metrics"][0]
    assert metric["resource"]["name"] == "cpu"


def test_scale_to_zero_holds_requests_at_the_interceptor_with_one_owner_of_the_count() -> None:
    md = _keda(minReplicas=0, idleSeconds=120, activationTimeoutSeconds=30)
    objects = _by_kind(md)
    scaled = objects["ScaledObject/demo"]["spec"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["cooldownPeriod"] == 120
    push = scaled["triggers"][1]
    assert push["type"] == "external-push"
    assert push["metadata"]["httpScaledObject"] == "demo"
    http = objects["HTTPScaledObject/demo"]
    # The add-on must not make a second ScaledObject for the same Deployment.
    assert http["metadata"]["annotations"] == {
        "httpscaledobject.keda.sh/skip-scaledobject-creation": "true"
    }
    assert http["spec"]["scaleTargetRef"]["service"] == "demo"
    assert http["spec"]["timeouts"] == {"conditionWait": "30s"}
    assert http["spec"]["scaledownPeriod"] == 120
    assert "demo.models.svc.cluster.local" in http["spec"]["hosts"]
    assert "PodDisruptionBudget/demo" not in objects
    assert service_url(md, CONFIG) == (
        "http://keda-add-on-http-interceptor-proxy.keda.svc.cluster.local:8080"
    )
    assert service_host(md, CONFIG) == "demo.models.svc.cluster.local"
    assert service_host(_keda(minReplicas=1), CONFIG) is None


def test_scale_to_zero_needs_keda_in_python_and_in_the_crd() -> None:
    spec = minimal(autoscaling={"minReplicas": 0, "maxReplicas": 2})
    with pytest.raises(InvalidSpecError, match="minReplicas 0 needs engine keda"):
        parse_model_deployment(spec)
    assert any("needs engine keda" in e for e in validate_against_crd(spec))
    spec["spec"]["autoscaling"]["engine"] = "keda"
    assert validate_against_crd(spec) == []


def test_a_canary_gets_its_own_deployment_and_service_serving_the_same_model_name() -> None:
    md = _md(route=ROUTE, canary={"weight": 10, "model": CANARY_MODEL, "replicas": 2})
    objects = _by_kind(md)
    canary = objects["Deployment/demo-canary"]
    stable = objects["Deployment/demo"]
    assert canary["spec"]["replicas"] == 2
    canary_labels = canary["spec"]["selector"]["matchLabels"]
    stable_labels = stable["spec"]["selector"]["matchLabels"]
    assert canary_labels != stable_labels  # neither Deployment adopts the other's pods
    assert objects["Service/demo-canary"]["spec"]["selector"] == canary_labels
    assert objects["Service/demo"]["spec"]["selector"] == stable_labels
    env = {
        e["name"]: e["value"] for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELPLANE_MODEL_NAME"] == "demo"  # a routed request is answered by either
    fetch = canary["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert "s3://bucket/v2.onnx" in fetch
    annotations = "metadata", "annotations", "modelplane.io/revision"
    assert _at(canary, annotations) != _at(stable, annotations)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _weights(objects: dict[str, Any]) -> dict[str, int]:
    (rule,) = objects["HTTPRoute/demo"]["spec"]["rules"]
    return {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}


def test_the_canary_gets_traffic_only_once_ready_and_not_after_a_rollback() -> None:
    md = _md(route=ROUTE, canary={"weight": 10, "model": CANARY_MODEL})
    assert _weights(_by_kind(md)) == {"demo": 100, "demo-canary": 0}
    assert _weights(_by_kind(md, Observed(canary_ready=True))) == {"demo": 90, "demo-canary": 10}
    rolled_back = Observed(canary_ready=True, canary_rolled_back=True)
    assert _weights(_by_kind(md, rolled_back)) == {"demo": 100, "demo-canary": 0}
    # Abort is one field: weight 0, the canary kept.
    aborted = _md(route=ROUTE, canary={"weight": 0, "model": CANARY_MODEL})
    objects = _by_kind(aborted, Observed(canary_ready=True))
    assert _weights(objects) == {"demo": 100, "demo-canary": 0}
    assert "Deployment/demo-canary" in objects


def test_the_route_attaches_to_the_named_gateway() -> None:
    md = _md(route={**ROUTE, "hostnames": ["demo.example.com"]})
    route = _by_kind(md)["HTTPRoute/demo"]["spec"]
    assert route["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "models",
            "namespace": "gateways",
        }
    ]
    assert route["hostnames"] == ["demo.example.com"]
    assert _weights(_by_kind(md)) == {"demo": 100}


def test_promote_moves_the_model_to_the_canarys_spec_then_drops_the_canary() -> None:
    canary = {"weight": 10, "model": CANARY_MODEL, "promote": True}
    md = _md(route=ROUTE, canary=canary)
    promoting = _by_kind(md, Observed(canary_ready=True))
    stable = promoting["Deployment/demo"]
    fetch = stable["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert "s3://bucket/v2.onnx" in fetch  # the canary's spec became the model's
    # Until the model is Ready on it, the canary keeps serving its share.
    assert _weights(promoting) == {"demo": 90, "demo-canary": 10}
    done = _by_kind(md, Observed(canary_ready=True, model_on_canary=True))
    assert "Deployment/demo-canary" not in done
    assert "Service/demo-canary" not in done
    assert _weights(done) == {"demo": 100}
    # The Deployment a promoted spec renders is the one the finished spec renders.
    finished = _md(model=CANARY_MODEL, route=ROUTE)
    assert _by_kind(finished)["Deployment/demo"] == stable
    assert revision(parse_model_deployment(minimal(model=CANARY_MODEL))) == _at(
        stable, ("metadata", "annotations", "modelplane.io/revision")
    )


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"canary": {"weight": 10, "model": CANARY_MODEL}}, "a canary needs spec.route"),
        ({"route": ROUTE, "canary": {"weight": 10}}, "a canary changes something"),
        ({"route": ROUTE, "canary": {"weight": 101, "model": CANARY_MODEL}}, "canary.weight"),
        (
            {
                "route": ROUTE,
                "canary": {"weight": 5, "model": CANARY_MODEL, "analysis": {"maxErrorRatio": None}},
            },
            "analysis needs a bound",
        ),
        (
            {
                "route": ROUTE,
                "canary": {"weight": 5, "model": CANARY_MODEL},
                "autoscaling": {"engine": "keda", "minReplicas": 0, "maxReplicas": 2},
            },
            "a canary needs the model to keep a replica",
        ),
    ],
)
def test_bad_traffic_specs_name_the_field(spec: dict[str, Any], problem: str) -> None:
    obj = minimal(**spec)
    with pytest.raises(InvalidSpecError) as raised:
        parse_model_deployment(obj)
    assert problem in str(raised.value)


def test_a_canary_shortens_the_longest_name() -> None:
    obj = minimal(route=ROUTE, canary={"weight": 5, "model": CANARY_MODEL})
    obj["metadata"]["name"] = "m" * 57
    with pytest.raises(InvalidSpecError, match=r"metadata.name: .* at most 56"):
        parse_model_deployment(obj)
    obj["metadata"]["name"] = "m" * 56
    names = [o["metadata"]["name"] for o in render_children(parse_model_deployment(obj), CONFIG)]
    assert max(map(len, names)) == 63
