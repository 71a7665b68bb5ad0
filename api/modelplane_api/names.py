"""Every name, label key and annotation key modelplane writes, in one place."""

from __future__ import annotations

GROUP = "modelplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md", "mdep")
CATEGORIES = ("modelplane",)
CRD_NAME = f"{PLURAL}.{GROUP}"
CONSUMER_KIND = "ModelConsumer"
CONSUMER_PLURAL = "modelconsumers"
CONSUMER_SINGULAR = "modelconsumer"
CONSUMER_SHORT_NAMES = ("mcon",)
CONSUMER_CRD_NAME = f"{CONSUMER_PLURAL}.{GROUP}"

FIELD_MANAGER = "modelplane-operator"
# Holds a field the operator stops applying until a controller takes it (HPA: replicas).
HANDOVER_FIELD_MANAGER = "modelplane-operator-handover"
RUNTIME_CONTAINER = "runtime"
FETCH_CONTAINER = "fetch-model"
HTTP_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
SERVICE_PORT = 80

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

APP_NAME = "modelplane-runtime"
COMPONENT = "model-server"
MANAGED_BY = "modelplane-operator"
PART_OF = "modelplane"

# Every child is named after its ModelDeployment (kinds differ), so the longest child
# name is the ModelDeployment's own: a DNS-1035 label, as a Service needs. A canary's
# Deployment and Service add CANARY_SUFFIX, so a model with a canary has a shorter name.
MAX_NAME_LENGTH = 63
CANARY_SUFFIX = "-canary"
# On a Deployment (not its pod template, so adding it restarts nothing): a digest of the
# model and runtime spec it runs, so that a promotion knows when the model runs the canary's.
ANNOTATION_REVISION = f"{GROUP}/revision"
# The KEDA HTTP add-on leaves the ScaledObject to the operator (one owner of the count).
ANNOTATION_SKIP_SCALED_OBJECT = "httpscaledobject.keda.sh/skip-scaledobject-creation"


def selector_labels(model_deployment_name: str) -> dict[str, str]:
    """The pod selector: fixed for the life of a ModelDeployment (selectors are immutable)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: model_deployment_name}


def common_labels(model_deployment_name: str) -> dict[str, str]:
    return {
        **selector_labels(model_deployment_name),
        LABEL_COMPONENT: COMPONENT,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
    }
