"""Where every ModelDeployment field becomes a Kubernetes field.

Pure functions: no client, clock or randomness, so the same ModelDeployment and
config always give the same objects. Owner references are added by the
operator at apply time (they need the live object's uid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from modelplane_api import facts, names
from modelplane_api.access import AccessTable, render_access_table
from modelplane_api.facts import LIVE_PATH, MODEL_DIR, READY_PATH, RUNTIME_UID
from modelplane_api.quantities import parse_quantity
from modelplane_api.settings import fetch_uri, model_location, runtime_settings
from modelplane_api.spec import ModelDeployment
from modelplane_operator import kinds
from modelplane_operator.config import OperatorConfig
from modelplane_operator.kinds import Kind

Obj = dict[str, Any]


def _header(md: ModelDeployment, kind: Kind) -> Obj:
    """apiVersion, kind and metadata: every child is named after its ModelDeployment."""
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {
            "name": md.name,
            "namespace": md.namespace,
            "labels": names.common_labels(md.name),
        },
    }


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
            {"name": names.HTTP_PORT_NAME, "containerPort": facts.HTTP_PORT, "protocol": "TCP"}
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


def render_deployment(
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> Obj:
    spec = md.spec
    deployment_spec: Obj = {}
    if spec.autoscaling is None:
        # With an HPA the field is left out entirely, so the operator never fights it.
        deployment_spec["replicas"] = spec.replicas
    deployment_spec |= {
        "selector": {"matchLabels": names.selector_labels(md.name)},
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
                "labels": names.common_labels(md.name),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(facts.HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": _pod_spec(md, config),
        },
    }
    return {**_header(md, kinds.DEPLOYMENT), "spec": deployment_spec}


def render_service(
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> Obj:
    return {
        **_header(md, kinds.SERVICE),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(md.name),
            "ports": [
                {
                    "name": names.HTTP_PORT_NAME,
                    "port": names.SERVICE_PORT,
                    "targetPort": names.HTTP_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


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


def render_hpa(
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> Obj | None:
    scaling = md.spec.autoscaling
    if scaling is None:
        return None
    return {
        **_header(md, kinds.HPA),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": kinds.DEPLOYMENT.api_version,
                "kind": kinds.DEPLOYMENT.kind,
                "name": md.name,
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [_hpa_metric(scaling.metric, scaling.target)],
        },
    }


def guaranteed_replicas(md: ModelDeployment) -> int:
    scaling = md.spec.autoscaling
    return scaling.min_replicas if scaling else md.spec.replicas


def render_pdb(
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> Obj | None:
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
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> Obj | None:
    """A restricted model's access description: its consumers' key digests (never a key),
    grants and limits, and how many replicas share each limit."""
    if not md.spec.restricted:
        return None
    table = access or AccessTable(replicas=guaranteed_replicas(md) or 1)
    return {
        **_header(md, kinds.ACCESS_CONFIG_MAP),
        "data": {facts.ACCESS_FILE: render_access_table(table)},
    }


Renderer = Callable[[ModelDeployment, OperatorConfig, "AccessTable | None"], "Obj | None"]
# One renderer per registered child kind (a test holds the two together).
RENDERERS: dict[Kind, Renderer] = {
    kinds.DEPLOYMENT: render_deployment,
    kinds.SERVICE: render_service,
    kinds.HPA: render_hpa,
    kinds.PDB: render_pdb,
    kinds.ACCESS_CONFIG_MAP: render_access_config_map,
}


def render_children(
    md: ModelDeployment, config: OperatorConfig, access: AccessTable | None = None
) -> list[Obj]:
    """Every object the operator applies for this ModelDeployment, in apply order.

    The renderers all take the operator config and the access table (built from the
    namespace's ModelConsumers; none yet without a cluster), used or not, so that the
    registry can call them alike.
    """
    rendered = (RENDERERS[kind](md, config, access) for kind in kinds.CHILDREN)
    return [obj for obj in rendered if obj is not None]


def service_url(md: ModelDeployment, config: OperatorConfig) -> str:
    """The in-cluster OIP base URL."""
    return f"http://{md.name}.{md.namespace}.svc.{config.cluster_domain}"
