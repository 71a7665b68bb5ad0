"""The registry of kinds the operator reads and writes: one entry per kind.

Each entry drives the kopf index and event handlers (handlers.py), the API
paths (kube.py), the objects' apiVersion/kind headers and the apply order
(render.py), which children are deleted when no longer rendered, which fields
are handed over (applier.py), and the chart's RBAC rules are checked against it.
Adding a child kind is one entry in CHILDREN plus its renderer in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from modelplane_api import names

FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    index: str  # the kopf index id, and the name handlers receive it under
    optional: bool = False  # rendered only for some specs; deleted when not
    # Fields that stay when the operator stops rendering them, because a controller
    # takes them over: the HPA scales a Deployment through /scale but does not write
    # while the count is within its bounds, so it may never take the field by itself.
    handed_over: tuple[FieldPath, ...] = ()
    read_only: bool = False  # watched for status, never written
    # Never listed or watched: the operator reads only the objects it names (Secrets).
    unwatched: bool = False
    # A second object of a kind, for a ModelDeployment's canary: named <name><suffix>.
    name_suffix: str = ""
    # What installs the kind's CRD, for a kind Kubernetes does not serve by itself.
    provider: str | None = None

    def child_name(self, model_deployment_name: str) -> str:
        return model_deployment_name + self.name_suffix

    @property
    def verbs(self) -> tuple[str, ...]:
        """The RBAC verbs the operator needs: a watch cache, and for a child, server-side
        apply (get for a child not in the cache, create and patch), delete when optional.
        An unwatched kind is read by name, created and patched, nothing more."""
        if self.read_only:
            return ("list", "watch")
        if self.unwatched:
            return ("get", "create", "patch")
        return ("get", "list", "watch", "create", "patch", *(("delete",) if self.optional else ()))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str, name: str | None = None) -> str:
        path = f"{self.group_version_path}/namespaces/{quote(namespace)}/{self.plural}"
        return f"{path}/{quote(name)}" if name else path


DEPLOYMENT = Kind(
    "apps", "v1", "Deployment", "deployments", "deployments", handed_over=(("spec", "replicas"),)
)
SERVICE = Kind("", "v1", "Service", "services", "services")
HPA = Kind(
    "autoscaling",
    "v2",
    "HorizontalPodAutoscaler",
    "horizontalpodautoscalers",
    "hpas",
    optional=True,
)
PDB = Kind(
    "policy",
    "v1",
    "PodDisruptionBudget",
    "poddisruptionbudgets",
    "pdbs",
    optional=True,
)
SCALED_OBJECT = Kind(
    "keda.sh",
    "v1alpha1",
    "ScaledObject",
    "scaledobjects",
    "scaledobjects",
    optional=True,
    provider="KEDA (https://keda.sh)",
)
HTTP_SCALED_OBJECT = Kind(
    "http.keda.sh",
    "v1alpha1",
    "HTTPScaledObject",
    "httpscaledobjects",
    "httpscaledobjects",
    optional=True,
    provider="the KEDA HTTP add-on (https://github.com/kedacore/http-add-on)",
)
HTTP_ROUTE = Kind(
    "gateway.networking.k8s.io",
    "v1",
    "HTTPRoute",
    "httproutes",
    "httproutes",
    optional=True,
    provider="a Gateway API implementation (https://gateway-api.sigs.k8s.io)",
)
# The canary: a second Deployment and Service, watched through the same indexes.
CANARY_DEPLOYMENT = Kind(
    "apps", "v1", "Deployment", "deployments", "deployments", optional=True,
    name_suffix=names.CANARY_SUFFIX,
)  # fmt: skip
CANARY_SERVICE = Kind(
    "", "v1", "Service", "services", "services", optional=True, name_suffix=names.CANARY_SUFFIX
)
# A restricted model's access description (key digests, grants, limits), which its pods
# mount: no key is in it, so it is a ConfigMap the operator may watch.
ACCESS_CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps", "configmaps", optional=True)
# In apply order: the Deployment first, so a refused pod template creates nothing else.
CHILDREN: tuple[Kind, ...] = (
    DEPLOYMENT,
    CANARY_DEPLOYMENT,
    SERVICE,
    CANARY_SERVICE,
    HPA,
    SCALED_OBJECT,
    HTTP_SCALED_OBJECT,
    PDB,
    ACCESS_CONFIG_MAP,
    HTTP_ROUTE,
)

MODEL_DEPLOYMENT = Kind(
    names.GROUP,
    names.VERSION,
    names.KIND,
    names.PLURAL,
    "model_deployments",
    read_only=True,  # its status subresource is written, through its own RBAC rule
)
MODEL_CONSUMER = Kind(
    names.GROUP,
    names.VERSION,
    names.CONSUMER_KIND,
    names.CONSUMER_PLURAL,
    "model_consumers",
    read_only=True,  # its status subresource is written, through its own RBAC rule
)
# A consumer's key: created and rotated by the operator, read back by name only. Never
# listed or watched, so the operator cannot read Secrets it was not told the name of.
KEY_SECRET = Kind("", "v1", "Secret", "secrets", "secrets", unwatched=True)
# Read only, for status (unschedulable, failing fetch); indexed by owner name, not object name.
PODS = Kind("", "v1", "Pod", "pods", "pods", read_only=True)

# By kind name: the first entry of a kind (a canary's shares its resource, not its rules).
BY_KIND: dict[str, Kind] = {}
for _kind in (*CHILDREN, MODEL_DEPLOYMENT, MODEL_CONSUMER, KEY_SECRET, PODS):
    BY_KIND.setdefault(_kind.kind, _kind)
# One watch per resource: the canary's kinds use the model's indexes.
WATCHED_CHILDREN: tuple[Kind, ...] = tuple(k for k in CHILDREN if not k.name_suffix)


def verbs_by_resource() -> dict[tuple[str, str], set[str]]:
    """The RBAC verbs per (group, resource): every kind's, a canary's included."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for kind in (*CHILDREN, MODEL_DEPLOYMENT, MODEL_CONSUMER, KEY_SECRET, PODS):
        verbs.setdefault((kind.group, kind.plural), set()).update(kind.verbs)
    return verbs
