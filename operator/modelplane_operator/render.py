"""Where every ModelDeployment field becomes a Kubernetes field.

Pure functions: no client, clock or randomness, so the same ModelDeployment and
config always give the same objects. Owner references are added by the
operator at apply time (they need the live object's uid).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modelplane_api import facts, names
from modelplane_api.access import AccessTable, render_access_table
from modelplane_api.facts import LIVE_PATH, MODEL_DIR, READY_PATH, RUNTIME_UID
from modelplane_api.quantities import parse_quantity
from modelplane_api.settings import fetch_uri, model_location, runtime_settings
from modelplane_api.spec import ModelDeployment, ModelSource, RuntimeSpec
from modelplane_operator import kinds
from modelplane_operator.config import OperatorConfig
from modelplane_operator.kinds import Kind

Obj = dict[str, Any]


def _header(md: ModelDeployment, kind: Kind) -> Obj:
    """apiVersion, kind and metadata: every child is named after its ModelDeployment (a
    canary's with a suffix), and labelled as what it belongs to."""
    name = kind.child_name(md.name)
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {
            "name": name,
            "namespace": md.namespace,
            "labels": names.common_labels(name),
        },
    }


@dataclass(frozen=True)
class Observed:
    """What rendering needs from the cluster besides the spec, read by reconcile: the
    namespace's consumers, and how far a canary and a promotion have got."""

    access: AccessTable | None = None
    canary_ready: bool = False  # the canary Deployment is available on its current spec
    canary_rolled_back: bool = False  # analysis rolled this canary revision back
    model_on_canary: bool = False  # promoting: the model is Ready on the canary's spec


class Unrenderable(Exception):
    """The spec asks for something the operator's configuration cannot give."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def served_spec(md: ModelDeployment) -> ModelDeployment:
    """The ModelDeployment the model's own Deployment serves: a promoted canary's model and
    runtime replace the model's."""
    canary = md.spec.canary
    if canary is None or not canary.promote:
        return md
    return _with(md, canary.model or md.spec.model, canary.runtime or md.spec.runtime)


def canary_spec(md: ModelDeployment) -> ModelDeployment | None:
    """The ModelDeployment the canary's Deployment serves (same name: it serves the same
    model name, so a request is answered alike by either), or None without a canary."""
    canary = md.spec.canary
    if canary is None:
        return None
    return _with(md, canary.model or md.spec.model, canary.runtime or md.spec.runtime)


def _with(md: ModelDeployment, model: ModelSource, runtime: RuntimeSpec) -> ModelDeployment:
    spec = md.spec.model_copy(update={"model": model, "runtime": runtime})
    return md.model_copy(update={"spec": spec})


def revision(md: ModelDeployment) -> str:
    """A digest of what a Deployment serves (model and runtime), to tell versions apart."""
    served = {
        "model": md.spec.model.model_dump(mode="json"),
        "runtime": md.spec.runtime.model_dump(mode="json"),
    }
    text = json.dumps(served, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _resources(md: ModelDeployment, config: OperatorConfig, *, with_gpu: bool) -> Obj:
    spec = md.spec.resources
    requests = {"cpu": config.default_cpu_request, "memory": config.default_memory_request}
    limits: dict[str, str] = {}
    if spec.requests:
        requests.update(spec.requests.model_dump(by_alias=True, exclude_none=True))
    if spec.limits:
        limits.update(spec.limits.model_dump(by_alias=True, exclude_none=True))
    # A memory limit is always set (an OOMing model must not take the node);
    # it defaults to the request so that the pod cannot be evicted for memory.
    limits.setdefault("memory", requests["memory"])
    if with_gpu and spec.gpu.count > 0:
        limits[spec.gpu.resource_name] = str(spec.gpu.count)
    return {"requests": requests, "limits": limits}


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _image(md: ModelDeployment, config: OperatorConfig) -> str:
    if md.spec.runtime.image:
        return md.spec.runtime.image
    return config.runtime_gpu_image if md.spec.resources.gpu.count > 0 else config.runtime_image


def _probe(path: str, *, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": names.HTTP_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _runtime_container(md: ModelDeployment, config: OperatorConfig) -> Obj:
    settings = runtime_settings(md)
    source, _ = model_location(md)
    mounts: list[Obj] = [{"name": vol, "mountPath": path} for vol, path in facts.SCRATCH_DIRS]
    if source != "image":
        mounts.insert(0, {"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
    if md.spec.restricted:
        mounts.append({"name": "access", "mountPath": facts.ACCESS_DIR, "readOnly": True})
    startup_period = facts.STARTUP_PROBE_PERIOD_SECONDS
    startup_budget = md.spec.runtime.startup_timeout_seconds or config.startup_timeout_seconds
    return {
        "name": names.RUNTIME_CONTAINER,
        "image": _image(md, config),
        "imagePullPolicy": config.image_pull_policy,
        "command": [*facts.RUNTIME_COMMAND, "serve"],
        "ports": [
            {"name": names.HTTP_PORT_NAME, "containerPort": facts.HTTP_PORT, "protocol": "TCP"},
            {"name": names.GRPC_PORT_NAME, "containerPort": facts.GRPC_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": key, "value": value} for key, value in settings.to_env().items()],
        "resources": _resources(md, config, with_gpu=True),
        "startupProbe": _probe(
            LIVE_PATH,
            period=startup_period,
            failures=max(1, -(-startup_budget // startup_period)),  # rounded up
        ),
        "livenessProbe": _probe(LIVE_PATH, period=10, failures=3),
        "readinessProbe": _probe(READY_PATH, period=5, failures=2),
        # Endpoints take a moment to drop a terminating pod: keep serving meanwhile.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(config.pre_stop_seconds)]}}},
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _fetch_container(md: ModelDeployment, config: OperatorConfig) -> Obj:
    model = md.spec.model
    _, destination = model_location(md)  # a file, or a directory for a directory/archive
    command = [*facts.RUNTIME_COMMAND, "fetch"]
    if config.model_volume_size_limit:
        # The fetch stops at the volume's size, with a message, before the kubelet evicts
        # the pod for it (an archive bomb, a model larger than the volume).
        command += ["--max-bytes", str(int(parse_quantity(config.model_volume_size_limit) or 0))]
    command += [fetch_uri(md), destination]
    if model.sha256:
        command += ["--sha256", model.sha256]
    mounts: list[Obj] = [
        {"name": "model", "mountPath": MODEL_DIR},
        *({"name": vol, "mountPath": path} for vol, path in facts.SCRATCH_DIRS),
    ]
    if model.cache:
        command += ["--cache", facts.MODEL_CACHE_DIR]
        if model.cache.size_limit:
            limit = parse_quantity(model.cache.size_limit) or 0
            command += ["--cache-max-bytes", str(int(limit))]
        mounts.append({"name": "model-cache", "mountPath": facts.MODEL_CACHE_DIR})
    if model.uri.startswith("pvc://"):  # copyToPod: the claim, for the fetch container only
        mounts.append(
            {"name": "model-source", "mountPath": facts.MODEL_SOURCE_DIR, "readOnly": True}
        )
    container: Obj = {
        "name": names.FETCH_CONTAINER,
        "image": _image(md, config),
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "resources": _resources(md, config, with_gpu=False),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if model.credentials and model.credentials.secret_ref:
        # Credentials reach only the fetch container, never the serving one.
        container["envFrom"] = [{"secretRef": {"name": model.credentials.secret_ref.name}}]
    return container


def _volumes(md: ModelDeployment, config: OperatorConfig) -> list[Obj]:
    source, _ = model_location(md)
    volumes: list[Obj] = []
    if source == "fetch":
        empty: Obj = (
            {"sizeLimit": config.model_volume_size_limit}
            if (config.model_volume_size_limit)
            else {}
        )
        volumes.append({"name": "model", "emptyDir": empty})
        if cache := md.spec.model.cache:
            volumes.append(
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
            )
    claim = {"claimName": urlsplit(md.spec.model.uri).netloc, "readOnly": True}
    if source == "pvc":
        volumes.append({"name": "model", "persistentVolumeClaim": claim})
    elif md.spec.model.uri.startswith("pvc://"):  # copied into the pod: read by the fetch
        volumes.append({"name": "model-source", "persistentVolumeClaim": claim})
    volumes += [{"name": vol, "emptyDir": {}} for vol, _ in facts.SCRATCH_DIRS]
    if md.spec.restricted:
        # The kubelet swaps the files in when the ConfigMap changes; the runtime re-reads them.
        volumes.append({"name": "access", "configMap": {"name": md.name}})
    return volumes


def _tolerations(md: ModelDeployment) -> list[Obj]:
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True) for t in md.spec.scheduling.tolerations
    ]
    gpu = md.spec.resources.gpu
    if gpu.count > 0:
        gpu_toleration = {"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    return tolerations


def _pod_spec(md: ModelDeployment, config: OperatorConfig) -> Obj:
    spec = md.spec
    scheduling = spec.scheduling
    source, _ = model_location(md)
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # preStop, then the longest request may still finish, then a margin.
        "terminationGracePeriodSeconds": (
            config.pre_stop_seconds + spec.runtime.request_timeout_seconds + 10
        ),
    }
    if spec.model.credentials and spec.model.credentials.service_account_name:
        pod["serviceAccountName"] = spec.model.credentials.service_account_name
    if source == "fetch":
        pod["initContainers"] = [_fetch_container(md, config)]
    pod["containers"] = [_runtime_container(md, config)]
    pod["volumes"] = _volumes(md, config)
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(sorted(scheduling.node_selector.items()))
    if tolerations := _tolerations(md):
        pod["tolerations"] = tolerations
    if scheduling.affinity:
        pod["affinity"] = scheduling.affinity.model_dump(by_alias=True, exclude_none=True)
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    return pod


def _deployment(
    md: ModelDeployment, config: OperatorConfig, kind: Kind, replicas: int | None
) -> Obj:
    """A Deployment serving ``md``'s model and runtime; ``replicas`` None leaves the count
    to an autoscaler."""
    spec = md.spec
    name = kind.child_name(md.name)
    deployment_spec: Obj = {} if replicas is None else {"replicas": replicas}
    deployment_spec |= {
        "selector": {"matchLabels": names.selector_labels(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": names.common_labels(name),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(facts.HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": _pod_spec(md, config),
        },
    }
    header = _header(md, kind)
    header["metadata"]["annotations"] = {names.ANNOTATION_REVISION: revision(md)}
    return {**header, "spec": deployment_spec}


def render_deployment(md: ModelDeployment, config: OperatorConfig, observed: Observed) -> Obj:
    # With an autoscaler the count is left out entirely, so the operator never fights it.
    replicas = None if md.spec.autoscaling else md.spec.replicas
    return _deployment(served_spec(md), config, kinds.DEPLOYMENT, replicas)


def _canary_kept(md: ModelDeployment, observed: Observed) -> bool:
    """A canary runs until a promotion has moved the model onto its spec."""
    canary = md.spec.canary
    return canary is not None and not (canary.promote and observed.model_on_canary)


def render_canary_deployment(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    view = canary_spec(md)
    if view is None or md.spec.canary is None or not _canary_kept(md, observed):
        return None
    return _deployment(view, config, kinds.CANARY_DEPLOYMENT, md.spec.canary.replicas)


def _service(md: ModelDeployment, kind: Kind) -> Obj:
    return {
        **_header(md, kind),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(kind.child_name(md.name)),
            "ports": [
                {
                    "name": names.HTTP_PORT_NAME,
                    "port": names.SERVICE_PORT,
                    "targetPort": names.HTTP_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                {
                    # The Open Inference Protocol over gRPC (cleartext HTTP/2).
                    "name": names.GRPC_PORT_NAME,
                    "port": facts.GRPC_PORT,
                    "targetPort": names.GRPC_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def render_service(md: ModelDeployment, config: OperatorConfig, observed: Observed) -> Obj:
    return _service(md, kinds.SERVICE)


def render_canary_service(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    return _service(md, kinds.CANARY_SERVICE) if _canary_kept(md, observed) else None


def _hpa_metric(metric: str, target: int) -> Obj:
    if metric == "pendingRequests":
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": facts.PENDING_REQUESTS_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }
    return {
        "type": "Resource",
        "resource": {
            "name": metric,
            "target": {"type": "Utilization", "averageUtilization": target},
        },
    }


def render_hpa(md: ModelDeployment, config: OperatorConfig, observed: Observed) -> Obj | None:
    scaling = md.spec.autoscaling
    if scaling is None or scaling.engine != "hpa":
        return None
    return {
        **_header(md, kinds.HPA),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [_hpa_metric(scaling.effective_metric, scaling.target)],
        },
    }


def _scale_target(md: ModelDeployment) -> Obj:
    return {
        "apiVersion": kinds.DEPLOYMENT.api_version,
        "kind": kinds.DEPLOYMENT.kind,
        "name": md.name,
    }


def pods_of(md: ModelDeployment, kind: Kind = kinds.DEPLOYMENT) -> str:
    """PromQL matchers for the pods of one of ``md``'s Deployments, by the labels every
    Prometheus pod target carries (a Deployment's pods are <name>-<template hash>-<id>)."""
    name = kind.child_name(md.name)
    return f'namespace="{md.namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'


def _keda_trigger(md: ModelDeployment, config: OperatorConfig, metric: str, target: int) -> Obj:
    if metric in {"cpu", "memory"}:
        return {"type": metric, "metricType": "Utilization", "metadata": {"value": str(target)}}
    if not config.prometheus_url:
        raise Unrenderable(
            "PrometheusNotConfigured",
            "autoscaling.engine keda scales on pendingRequests read from Prometheus, and the "
            "operator has no Prometheus address: set the chart's prometheus.url "
            "(MODELPLANE_OPERATOR_PROMETHEUS_URL), or use metric cpu",
        )
    return {
        "type": "prometheus",
        # AverageValue: KEDA divides the sum by the replicas, as the HPA's Pods metric does.
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": config.prometheus_url,
            "query": f"sum({facts.PENDING_REQUESTS_METRIC}{{{pods_of(md)}}}) or vector(0)",
            "threshold": str(target),
        },
    }


def render_scaled_object(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    scaling = md.spec.autoscaling
    if scaling is None or scaling.engine != "keda":
        return None
    triggers = [_keda_trigger(md, config, scaling.effective_metric, scaling.target)]
    if scaling.scales_to_zero:
        # The interceptor's count of held and in-flight requests: what wakes a model at 0.
        triggers.append(
            {
                "type": "external-push",
                "metadata": {
                    "scalerAddress": config.keda_http_scaler,
                    "httpScaledObject": md.name,
                },
            }
        )
    return {
        **_header(md, kinds.SCALED_OBJECT),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": 5,
            # KEDA's cooldown applies to the last replica only (to and from zero).
            "cooldownPeriod": scaling.idle_seconds,
            "triggers": triggers,
        },
    }


def interceptor_hosts(md: ModelDeployment, config: OperatorConfig) -> list[str]:
    """The Host headers the interceptor routes to this model: its Service's names."""
    service = f"{md.name}.{md.namespace}"
    return [f"{service}.svc.{config.cluster_domain}", f"{service}.svc", service]


def render_http_scaled_object(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    scaling = md.spec.autoscaling
    if scaling is None or scaling.engine != "keda" or not scaling.scales_to_zero:
        return None
    header = _header(md, kinds.HTTP_SCALED_OBJECT)
    # Routing and the held-request count only: the ScaledObject above is the one owner.
    header["metadata"]["annotations"] = {names.ANNOTATION_SKIP_SCALED_OBJECT: "true"}
    return {
        **header,
        "spec": {
            "hosts": interceptor_hosts(md, config),
            "scaleTargetRef": {
                **_scale_target(md),
                "service": md.name,
                "port": names.SERVICE_PORT,
            },
            "replicas": {"min": 0, "max": scaling.max_replicas},
            "scaledownPeriod": scaling.idle_seconds,
            "scalingMetric": {"concurrency": {"targetValue": scaling.target}},
            "timeouts": {"conditionWait": f"{scaling.activation_timeout_seconds}s"},
        },
    }


def guaranteed_replicas(md: ModelDeployment) -> int:
    scaling = md.spec.autoscaling
    return scaling.min_replicas if scaling else md.spec.replicas


def render_pdb(md: ModelDeployment, config: OperatorConfig, observed: Observed) -> Obj | None:
    """Only with at least 2 replicas guaranteed: a PDB on 1 replica blocks node drains."""
    if guaranteed_replicas(md) < 2:
        return None
    return {
        **_header(md, kinds.PDB),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(md.name)},
        },
    }


def render_access_config_map(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    """A restricted model's access description: its consumers' key digests (never a key),
    grants and limits, and how many replicas share each limit."""
    if not md.spec.restricted:
        return None
    table = observed.access or AccessTable(replicas=guaranteed_replicas(md) or 1)
    return {
        **_header(md, kinds.ACCESS_CONFIG_MAP),
        "data": {facts.ACCESS_FILE: render_access_table(table)},
    }


def canary_weight(md: ModelDeployment, observed: Observed) -> int:
    """The canary's share of the route now: its weight only while it is Ready, not rolled
    back and not yet replaced by a promotion."""
    canary = md.spec.canary
    if canary is None or not _canary_kept(md, observed):
        return 0
    if not observed.canary_ready or observed.canary_rolled_back:
        return 0
    return canary.weight


def _backend(name: str, weight: int) -> Obj:
    return {
        "group": "",
        "kind": "Service",
        "name": name,
        "port": names.SERVICE_PORT,
        "weight": weight,
    }


def render_http_route(
    md: ModelDeployment, config: OperatorConfig, observed: Observed
) -> Obj | None:
    route = md.spec.route
    if route is None:
        return None
    gateway = route.gateway
    parent: Obj = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": gateway.name,
        "namespace": gateway.namespace or md.namespace,
    }
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    weight = canary_weight(md, observed)
    # The canary stays listed at weight 0 until it is removed, so that its share moves by
    # a weight change alone.
    backends = [_backend(md.name, 100 - weight)]
    if _canary_kept(md, observed):
        backends.append(_backend(kinds.CANARY_SERVICE.child_name(md.name), weight))
    spec: Obj = {"parentRefs": [parent]}
    if route.hostnames:
        spec["hostnames"] = list(route.hostnames)
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": backends,
        }
    ]
    return {**_header(md, kinds.HTTP_ROUTE), "spec": spec}


Renderer = Callable[[ModelDeployment, OperatorConfig, Observed], "Obj | None"]
# One renderer per registered child kind (a test holds the two together).
RENDERERS: dict[Kind, Renderer] = {
    kinds.DEPLOYMENT: render_deployment,
    kinds.CANARY_DEPLOYMENT: render_canary_deployment,
    kinds.SERVICE: render_service,
    kinds.CANARY_SERVICE: render_canary_service,
    kinds.HPA: render_hpa,
    kinds.SCALED_OBJECT: render_scaled_object,
    kinds.HTTP_SCALED_OBJECT: render_http_scaled_object,
    kinds.PDB: render_pdb,
    kinds.ACCESS_CONFIG_MAP: render_access_config_map,
    kinds.HTTP_ROUTE: render_http_route,
}


def render_children(
    md: ModelDeployment, config: OperatorConfig, observed: Observed | None = None
) -> list[Obj]:
    """Every object the operator applies for this ModelDeployment, in apply order.

    The renderers all take the operator config and what reconcile observed (the
    namespace's ModelConsumers, the canary's progress; nothing without a cluster), used or
    not, so that the registry can call them alike. Raises Unrenderable when the operator's
    configuration lacks what the spec needs.
    """
    seen = observed or Observed()
    rendered = (RENDERERS[kind](md, config, seen) for kind in kinds.CHILDREN)
    return [obj for obj in rendered if obj is not None]


def service_url(md: ModelDeployment, config: OperatorConfig) -> str:
    """The in-cluster OIP base URL: the model's Service, or, for a model that scales to
    zero, the KEDA HTTP add-on's interceptor, which holds requests while a pod starts
    (sent with the Host header ``service_host``)."""
    scaling = md.spec.autoscaling
    if scaling is not None and scaling.scales_to_zero:
        service, port = config.keda_http_interceptor.rsplit(":", 1)
        return f"http://{service}.svc.{config.cluster_domain}:{port}"
    return f"http://{md.name}.{md.namespace}.svc.{config.cluster_domain}"


def service_host(md: ModelDeployment, config: OperatorConfig) -> str | None:
    scaling = md.spec.autoscaling
    if scaling is None or not scaling.scales_to_zero:
        return None
    return interceptor_hosts(md, config)[0]
