"""Where spec fields land in the rendered objects: table-driven cases."""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

import pytest

from modelplane_api.settings import RuntimeSettings, runtime_settings
from modelplane_api.spec import ModelStatus, parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children, service_url
from modelplane_operator.status import compute_status
from test_operator.samples import minimal

CONFIG = OperatorConfig.model_construct()


def _render(**spec: Any) -> dict[str, dict[str, Any]]:
    md = parse_model_deployment(minimal(**spec))
    return {obj["kind"]: obj for obj in render_children(md, CONFIG)}


def _pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = objects["Deployment"]["spec"]["template"]["spec"]
    return pod


def _runtime(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(objects)["containers"][0]
    return container


def _env(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _runtime(objects)["env"]}


@pytest.mark.parametrize(
    ("spec", "kinds", "replicas"),
    [
        ({}, ["Deployment", "Service", "ConfigMap"], 1),
        ({"access": {"mode": "Open"}}, ["Deployment", "Service"], 1),
        ({"replicas": 2}, ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap"], 2),
        ({"replicas": 0}, ["Deployment", "Service", "ConfigMap"], 0),
        (
            {"autoscaling": {"maxReplicas": 4}, "access": {"mode": "Open"}},
            ["Deployment", "Service", "HorizontalPodAutoscaler"],
            None,
        ),
        (
            {"autoscaling": {"minReplicas": 2, "maxReplicas": 4}, "replicas": 7},
            [
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "ConfigMap",
            ],
            None,
        ),
    ],
)
def test_children_and_who_owns_replicas(
    spec: dict[str, Any], kinds: list[str], replicas: int | None
) -> None:
    objects = _render(**spec)
    assert list(objects) == kinds
    assert objects["Deployment"]["spec"].get("replicas") == replicas


def test_hpa_metrics() -> None:
    cpu = _render(autoscaling={"maxReplicas": 3, "target": 60})["HorizontalPodAutoscaler"]
    assert cpu["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 60},
            },
        }
    ]
    assert cpu["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo",
    }
    pending = _render(autoscaling={"maxReplicas": 3, "metric": "pendingRequests", "target": 8})
    metric = pending["HorizontalPodAutoscaler"]["spec"]["metrics"][0]
    assert metric["pods"]["metric"]["name"] == "modelplane_pending_requests"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}


def test_gpu_limit_toleration_image_and_provider() -> None:
    objects = _render(resources={"gpu": {"count": 2, "resourceName": "amd.com/gpu"}})
    runtime = _runtime(objects)
    assert runtime["resources"]["limits"]["amd.com/gpu"] == "2"
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(objects)[
        "tolerations"
    ]
    assert runtime["image"] == CONFIG.runtime_gpu_image
    assert _env(objects)["MODELPLANE_EXECUTION_PROVIDERS"] == (
        "CUDAExecutionProvider,CPUExecutionProvider"
    )
    # The fetch init container never holds a GPU.
    init = _pod(objects)["initContainers"][0]
    assert "amd.com/gpu" not in json.dumps(init)


def test_no_gpu_means_no_gpu_anywhere_in_the_pod() -> None:
    objects = _render(scheduling={"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    text = json.dumps(objects["Deployment"])
    for word in ("gpu", "CUDA", "Tensorrt"):
        assert word not in text
    assert _runtime(objects)["image"] == CONFIG.runtime_image


# A fetched model's volume is bounded, and the fetch stops at its size with a message.
FETCHED_VOLUME = {"emptyDir": {"sizeLimit": "100Gi"}}


@pytest.mark.parametrize(
    ("uri", "init", "model_volume", "model_path"),
    [
        ("s3://b/k/model.onnx", True, FETCHED_VOLUME, "/mnt/models/model.onnx"),
        ("https://h/model.onnx", True, FETCHED_VOLUME, "/mnt/models/model.onnx"),
        (
            "pvc://store/fraud/v7/model.onnx",
            False,
            {"persistentVolumeClaim": {"claimName": "store", "readOnly": True}},
            "/mnt/models/fraud/v7/model.onnx",
        ),
        ("file:///opt/models/model.onnx", False, None, "/opt/models/model.onnx"),
    ],
)
def test_model_delivery(
    uri: str, init: bool, model_volume: dict[str, Any] | None, model_path: str
) -> None:
    objects = _render(model={"uri": uri, "sha256": "a" * 64})
    pod = _pod(objects)
    volumes = {v["name"]: {k: w for k, w in v.items() if k != "name"} for v in pod["volumes"]}
    assert ("initContainers" in pod) == init
    assert volumes.get("model") == model_volume
    assert _env(objects)["MODELPLANE_MODEL_PATH"] == model_path
    mounts = {m["name"]: m for m in _runtime(objects)["volumeMounts"]}
    if model_volume:
        assert mounts["model"]["readOnly"] is True
    if init:
        assert pod["initContainers"][0]["command"] == [
            "python",
            "-m",
            "modelplane_runtime",
            "fetch",
            "--max-bytes",
            str(100 * 2**30),  # the volume's sizeLimit
            uri,
            "/mnt/models/model.onnx",
            "--sha256",
            "a" * 64,
        ]
        assert "MODELPLANE_MODEL_SHA256" not in _env(objects)  # verified by the fetch
    else:
        assert _env(objects)["MODELPLANE_MODEL_SHA256"] == "a" * 64  # verified by the runtime
    assert {"tmp", "cache"} <= set(volumes)


def test_credentials_reach_only_the_fetch_container() -> None:
    objects = _render(model={"uri": "s3://b/m.onnx", "credentials": {"secretRef": {"name": "k"}}})
    pod = _pod(objects)
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "k"}}]
    assert "envFrom" not in pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    sa = _pod(_render(model={"uri": "gs://b/m", "credentials": {"serviceAccountName": "r"}}))
    assert sa["serviceAccountName"] == "r"


def test_probes_shutdown_and_security() -> None:
    objects = _render(runtime={"requestTimeoutSeconds": 120})
    runtime = _runtime(objects)
    pod = _pod(objects)
    assert runtime["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert runtime["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert runtime["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert runtime["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    # The port the pod exposes for gRPC is the one the runtime serves it on.
    settings = runtime_settings(parse_model_deployment(minimal()))
    assert settings.grpc_port == runtime["ports"][1]["containerPort"]
    assert runtime["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 120 + 5
    assert runtime["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in runtime["volumeMounts"]} >= {"/tmp", "/home/modelplane/.cache"}


def test_scheduling_passes_through() -> None:
    scheduling = {
        "nodeSelector": {"pool": "inference", "accelerator": "t4"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "priorityClassName": "high",
    }
    pod = _pod(_render(scheduling=scheduling))
    assert pod["nodeSelector"] == {"accelerator": "t4", "pool": "inference"}
    assert pod["tolerations"] == scheduling["tolerations"]
    assert pod["affinity"] == scheduling["affinity"]
    assert pod["priorityClassName"] == "high"


def test_resources_default_and_memory_limit() -> None:
    plain = _runtime(_render())["resources"]
    assert plain == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    sized = _runtime(
        _render(resources={"requests": {"cpu": 2, "memory": "6Gi"}, "limits": {"cpu": "4"}})
    )["resources"]
    assert sized == {
        "requests": {"cpu": "2", "memory": "6Gi"},
        "limits": {"cpu": "4", "memory": "6Gi"},
    }


def test_selector_and_names_never_change_across_updates() -> None:
    before = _render()
    after = _render(
        replicas=3,
        resources={"gpu": {"count": 1}},
        runtime={"image": "other:2", "batching": {"maxBatchSize": 4}},
        autoscaling={"minReplicas": 2, "maxReplicas": 5},
    )
    assert before["Deployment"]["spec"]["selector"] == after["Deployment"]["spec"]["selector"]
    assert before["Service"]["spec"]["selector"] == after["Service"]["spec"]["selector"]
    for kind in before:
        assert before[kind]["metadata"]["name"] == after[kind]["metadata"]["name"]
        assert before[kind]["metadata"]["labels"] == after[kind]["metadata"]["labels"]
    template_labels = after["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert after["Deployment"]["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_longest_name_keeps_every_child_within_63_characters() -> None:
    obj = minimal(replicas=2, autoscaling={"minReplicas": 2, "maxReplicas": 3})
    obj["metadata"]["name"] = "m" * 63
    for child in render_children(parse_model_deployment(obj), CONFIG):
        assert len(child["metadata"]["name"]) <= 63
        assert all(len(v) <= 63 for v in child["metadata"]["labels"].values())


def test_rendered_env_is_exactly_what_the_runtime_reads() -> None:
    md = parse_model_deployment(
        minimal(
            resources={"gpu": {"count": 1}},
            runtime={"threads": {"intraOp": 3}, "batching": {"maxBatchSize": 7, "maxLatencyMs": 9}},
        )
    )
    env = _env({o["kind"]: o for o in render_children(md, CONFIG)})
    known = {"MODELPLANE_" + name.upper() for name in RuntimeSettings.model_fields}
    assert set(env) <= known
    # The runtime, reading that environment, arrives at the settings the operator meant.
    with mock.patch.dict(os.environ, env, clear=True):
        assert RuntimeSettings() == runtime_settings(md)


def test_service_and_url() -> None:
    objects = _render()
    http, grpc = objects["Service"]["spec"]["ports"]
    assert (http["port"], http["targetPort"]) == (80, "http")
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (
        8081,
        "grpc",
        "kubernetes.io/h2c",
    )
    md = parse_model_deployment(minimal())
    assert service_url(md, CONFIG) == "http://demo.models.svc.cluster.local"


@pytest.mark.parametrize(
    ("declared", "failures"), [(None, None), (10, 2), (3601, 721), (86400, 17280)]
)
def test_the_startup_probe_budget_follows_the_model(
    declared: int | None, failures: int | None
) -> None:
    runtime_spec = {"startupTimeoutSeconds": declared} if declared else {}
    probe = _runtime(_render(runtime=runtime_spec))["startupProbe"]
    assert probe["periodSeconds"] == 5
    budget = declared or CONFIG.startup_timeout_seconds
    assert probe["failureThreshold"] == (failures or -(-budget // 5))
    assert probe["failureThreshold"] * probe["periodSeconds"] >= budget


def test_warmup_shapes_reach_the_runtime_as_json() -> None:
    shapes = [{"input_ids": [1, 128]}, {"input_ids": [8, 512], "mask": [8, 512]}]
    env = _env(_render(runtime={"warmup": {"shapes": shapes}}))
    assert json.loads(env["MODELPLANE_WARMUP_SHAPES"]) == shapes
    with mock.patch.dict(os.environ, env, clear=True):
        read = RuntimeSettings().warmup_shapes
    assert read == ({"input_ids": (1, 128)}, {"input_ids": (8, 512), "mask": (8, 512)})


@pytest.mark.parametrize(
    ("uri", "destination"),
    [
        ("s3://models/bert/model.onnx", "/mnt/models/model.onnx"),
        ("s3://models/bert/", "/mnt/models/model"),
        ("https://example.com/bert.tar.gz", "/mnt/models/model"),
        ("gs://models/bert.zip", "/mnt/models/model"),
    ],
)
def test_a_directory_or_archive_is_fetched_into_a_directory(uri: str, destination: str) -> None:
    graph = {"graph": "onnx/model.onnx"} if destination.endswith("/model") else {}
    objects = _render(model={"uri": uri, **graph})
    fetch = _pod(objects)["initContainers"][0]
    assert fetch["command"][-2:] == [uri, destination]
    env = _env(objects)
    assert env["MODELPLANE_MODEL_PATH"] == destination
    assert env.get("MODELPLANE_MODEL_GRAPH") == graph.get("graph")


def test_the_model_cache_is_mounted_in_the_fetch_container_only() -> None:
    model = {
        "uri": "s3://b/forecaster/",
        "sha256": "a" * 64,
        "cache": {"claimName": "model-cache", "sizeLimit": "2Gi"},
    }
    objects = _render(model=model)
    pod = _pod(objects)
    (fetch,) = pod["initContainers"]
    assert fetch["command"][-4:] == [
        "--cache",
        "/mnt/model-cache",
        "--cache-max-bytes",
        str(2 * 2**30),
    ]
    assert {"name": "model-cache", "mountPath": "/mnt/model-cache"} in fetch["volumeMounts"]
    # The serving container never sees the shared cache: it cannot alter what other pods load.
    assert all(m["name"] != "model-cache" for m in _runtime(objects)["volumeMounts"])
    claim = {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}
    assert claim in pod["volumes"]


def test_the_status_says_how_the_newest_pod_used_the_cache() -> None:
    def pod(created: str, message: str) -> dict[str, Any]:
        terminated = {"exitCode": 0, "message": message}
        return {
            "metadata": {"creationTimestamp": created},
            "status": {
                "initContainerStatuses": [
                    {"name": "fetch-model", "state": {"terminated": terminated}}
                ]
            },
        }

    pods = [
        pod("2026-11-30T01:00:05Z", "model cache hit"),
        pod("2026-11-30T01:00:00Z", "model cache miss"),
    ]
    status = compute_status(
        name="demo",
        generation=1,
        previous={},
        url=None,
        model=ModelStatus(uri="s3://b/m/", sha256="a" * 64),
        deployment=None,
        pods=pods,
        problem=None,
        now="2026-11-30T01:00:10Z",
    )
    assert status["model"]["cache"] == "hit"
