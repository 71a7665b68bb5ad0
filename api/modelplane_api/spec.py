"""The ModelDeployment resource as typed pydantic models.

The CRD's openAPIV3Schema is generated from these models (see ``crd.py``), so
field names, types, bounds and defaults cannot drift apart. Rules that span
fields are declared once as :class:`CrossFieldRule`: a CEL expression for the
API server and the equivalent Python check for everything that parses a spec
without one (the operator, ``modelplane render``, ``modelplane serve``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from modelplane_api import facts
from modelplane_api.facts import GPU_PROVIDERS, SHA256_PATTERN, URI_SCHEMES, ExecutionProvider
from modelplane_api.names import API_VERSION, CANARY_SUFFIX, KIND, MAX_NAME_LENGTH

# Kubernetes resource.Quantity, without a sign: negative amounts make no sense here.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
PERCENT_OR_INT_PATTERN = r"^(100|[1-9]?[0-9])%$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
RESOURCE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$"
# A DNS-1123 subdomain (Secret, ServiceAccount and PriorityClass names).
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
IMAGE_PATTERN = r"^[^\s]+$"


@dataclass(frozen=True)
class CrossFieldRule:
    """One validation rule, stated for both the API server (CEL) and Python."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_crd(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


def _quantity(value: str) -> str:
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise PydanticCustomError(
            "quantity",
            "'{value}' is not a Kubernetes quantity; write e.g. 500m, 2, 512Mi or 4Gi",
            {"value": value},
        )
    return value


def _number_to_text(value: object) -> object:
    # YAML reads `cpu: 1` as an int; Kubernetes accepts it as a quantity.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_number_to_text),
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def _percent_or_int(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError("int_or_percent", "must not be negative", {})
    elif not re.fullmatch(PERCENT_OR_INT_PATTERN, value):
        raise PydanticCustomError(
            "int_or_percent",
            "'{value}' must be a whole number or a percentage like 25%",
            {"value": value},
        )
    return value


IntOrPercent = Annotated[
    int | str,
    AfterValidator(_percent_or_int),
    WithJsonSchema(
        {
            # Exactly this anyOf, nothing inside it: the API server's one structural
            # exception for int-or-string. Bounds go beside it (each applies to its type).
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 0,
            "pattern": PERCENT_OR_INT_PATTERN,
        }
    ),
]


def _pattern_check(pattern: str, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise PydanticCustomError("pattern", "'{value}' must be " + what, {"value": value})
        return value

    return AfterValidator(check)


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal: CEL reads escapes, so a regex's backslash doubles."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pattern_rule(pattern: str, what: str) -> Any:
    """The same check as CEL, with the same message, for the API server."""
    rule: dict[str, JsonValue] = {
        "rule": f"self.matches({cel_string(pattern)})",
        "message": f"must be {what}",
    }
    return Field(json_schema_extra={"x-kubernetes-validations": [rule]})


_SHA256 = (SHA256_PATTERN, "64 lowercase hex characters")
_RESOURCE_NAME = (RESOURCE_NAME_PATTERN, "a domain-prefixed resource such as nvidia.com/gpu")
_NAME = (
    NAME_PATTERN,
    "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter",
)
_SUBDOMAIN = (
    SUBDOMAIN_PATTERN,
    "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
)
_LABEL_KEY = (
    LABEL_KEY_PATTERN,
    "a label key: an optional DNS subdomain prefix and '/', then at most 63 letters, "
    "digits, '-', '_' or '.', starting and ending with a letter or digit",
)
_LABEL_VALUE = (
    LABEL_VALUE_PATTERN,
    "empty or at most 63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit",
)
_IMAGE = (IMAGE_PATTERN, "an image reference without whitespace")

Sha256 = Annotated[str, _pattern_check(*_SHA256), _pattern_rule(*_SHA256)]
ExtendedResourceName = Annotated[
    str, _pattern_check(*_RESOURCE_NAME), _pattern_rule(*_RESOURCE_NAME)
]
DnsLabel = Annotated[str, _pattern_check(*_NAME), _pattern_rule(*_NAME)]
DnsSubdomain = Annotated[str, _pattern_check(*_SUBDOMAIN), _pattern_rule(*_SUBDOMAIN)]
LabelKey = Annotated[str, _pattern_check(*_LABEL_KEY), _pattern_rule(*_LABEL_KEY)]
LabelValue = Annotated[
    str, Field(max_length=63), _pattern_check(*_LABEL_VALUE), _pattern_rule(*_LABEL_VALUE)
]
Image = Annotated[str, _pattern_check(*_IMAGE), _pattern_rule(*_IMAGE)]


def _label_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if len(key) > 317 or not re.fullmatch(LABEL_KEY_PATTERN, key):
            raise PydanticCustomError(
                "label_key", "key '{key}' must be " + _LABEL_KEY[1], {"key": key}
            )
    return value


NODE_SELECTOR_RULE: dict[str, JsonValue] = {
    # Map keys have no schema of their own: CEL checks them (maxProperties bounds the cost).
    "rule": f"self.all(k, size(k) <= 317 && k.matches({cel_string(LABEL_KEY_PATTERN)}))",
    "message": "every key must be " + _LABEL_KEY[1],
}


class SpecModel(BaseModel):
    """Base for spec parts: camelCase on the wire, unknown fields rejected, no coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )
    rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.as_crd() for rule in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> SpecModel:
        for rule in self.rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "cross_field", rule.message, {"field_path": rule.field_path or ""}
                )
        return self


def _is_zero(value: int | str) -> bool:
    return value in (0, "0%")


# --- spec.model -------------------------------------------------------------


class SecretRef(SpecModel):
    """A Secret in the ModelDeployment's namespace."""

    name: DnsSubdomain = Field(min_length=1, max_length=253, description="The Secret's name.")


class Credentials(SpecModel):
    """Where the model-fetch init container gets cloud credentials."""

    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret whose keys become the fetch container's environment "
        "(e.g. AWS_ACCESS_KEY_ID); never given to the serving container.",
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None,
        max_length=253,
        description="Service account the pods run as, for workload identity "
        "(IRSA, GKE Workload Identity). It must exist in the namespace.",
    )

    rules = (
        CrossFieldRule(
            cel="has(self.secretRef) != has(self.serviceAccountName)",
            message="set exactly one of secretRef or serviceAccountName",
            check=lambda c: (c.secret_ref is None) != (c.service_account_name is None),
        ),
    )


def is_model_tree(uri: str) -> bool:
    """A directory or archive of files (a graph and its weights), not one .onnx file."""
    return uri.endswith("/") or uri.lower().endswith(facts.ARCHIVE_SUFFIXES)


class ModelCache(SpecModel):
    """A cache of fetched models that replicas share, keyed by the model's digest."""

    claim_name: DnsSubdomain = Field(
        min_length=1,
        max_length=253,
        description="A PersistentVolumeClaim in this namespace, ReadWriteMany when replicas "
        "run on several nodes. A restart or scale-up copies the model from it instead of "
        "downloading it; a changed model (a new sha256) is a new entry.",
    )
    size_limit: Quantity | None = Field(
        default=None,
        description="Keep the cache under this size (e.g. 200Gi): the least recently used "
        "models are evicted after a fill. Unset: nothing is evicted.",
    )


class ModelSource(SpecModel):
    """The ONNX model to serve and how to get it."""

    uri: str = Field(
        max_length=2048,
        description="s3://bucket/key, gs://bucket/key, http(s)://..., pvc://claim/path "
        "or file:///absolute/path/in/image",
    )
    sha256: Sha256 | None = Field(
        default=None,
        max_length=64,
        description="Expected sha256 of the model file or archive, or of a directory's "
        "SHA256SUMS manifest (which lists every file with its own digest); a mismatch "
        "fails the fetch and nothing is served.",
    )
    graph: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^[^/.](\.?[^.])*\.onnx$",  # relative, no "..": inside the model
        description="For a directory (uri ending in /) or an archive (.tar, .tar.gz, .tgz, "
        ".zip): the graph file inside it, when it is not the only .onnx file.",
    )
    credentials: Credentials | None = Field(
        default=None, description="How the fetch authenticates; omit for public models."
    )
    cache: ModelCache | None = Field(
        default=None,
        description="Share fetched models between replicas and restarts (needs sha256).",
    )
    copy_to_pod: bool = Field(
        default=False,
        description="For a pvc:// or file:// model: copy it into the pod's own volume, "
        "verified as it is copied (through sha256), before serving, instead of reading it "
        "in place; writing the volume later then cannot change what is served (onnxruntime "
        "maps external weights). The pod's ephemeral storage must hold the model once.",
    )

    rules = (
        CrossFieldRule(
            cel="!has(self.cache) || has(self.sha256)",
            message="cache needs sha256: the cache is keyed by the model's digest, so that a "
            "changed model is never served from it",
            check=lambda m: m.cache is None or m.sha256 is not None,
            field_path=".cache",
        ),
        CrossFieldRule(
            cel="!has(self.cache) || !(self.uri.startsWith('pvc://') "
            "|| self.uri.startsWith('file://'))",
            message="cache is for fetched models: a pvc:// or file:// model is read in place",
            check=lambda m: m.cache is None or not m.uri.startswith(("pvc://", "file://")),
            field_path=".cache",
        ),
        CrossFieldRule(
            cel="!has(self.copyToPod) || !self.copyToPod || self.uri.startsWith('pvc://') "
            "|| self.uri.startsWith('file://')",
            message="copyToPod is for a pvc:// or file:// model: a fetched one is always "
            "copied into the pod",
            check=lambda m: not m.copy_to_pod or m.uri.startswith(("pvc://", "file://")),
            field_path=".copyToPod",
        ),
        CrossFieldRule(
            cel="self.uri.matches('^(" + "|".join(URI_SCHEMES) + ")://.+')",
            message="uri must start with one of " + ", ".join(f"{s}://" for s in URI_SCHEMES),
            check=lambda m: re.match(r"^(" + "|".join(URI_SCHEMES) + r")://.+", m.uri) is not None,
            field_path=".uri",
        ),
        CrossFieldRule(
            cel="!self.uri.startsWith('pvc://') "
            "|| self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+')",
            message="a pvc uri must be pvc://<claim-name>/<path/to/model.onnx>",
            check=lambda m: (
                not m.uri.startswith("pvc://")
                or re.match(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+", m.uri) is not None
            ),
            field_path=".uri",
        ),
        CrossFieldRule(
            cel="!has(self.graph) || self.uri.endsWith('/') || "
            + " || ".join(f"self.uri.endsWith('{s}')" for s in facts.ARCHIVE_SUFFIXES),
            message="graph names a file inside a directory (uri ending in /) or an archive "
            "(" + ", ".join(facts.ARCHIVE_SUFFIXES) + "); a single-file uri is the graph",
            check=lambda m: m.graph is None or is_model_tree(m.uri),
            field_path=".graph",
        ),
        CrossFieldRule(
            cel="!self.uri.startsWith('file://') || self.uri.matches('^file:///.+')",
            message="a file uri must be absolute: file:///path/in/image/model.onnx",
            check=lambda m: not m.uri.startswith("file://") or m.uri.startswith("file:///"),
            field_path=".uri",
        ),
    )


# --- spec.runtime -----------------------------------------------------------


class Threads(SpecModel):
    """onnxruntime's thread pools."""

    intra_op: int = Field(
        default=0,
        ge=0,
        le=facts.THREADS_LIMIT,
        description="Threads inside one operator; 0 lets onnxruntime choose.",
    )
    inter_op: int = Field(
        default=0,
        ge=0,
        le=facts.THREADS_LIMIT,
        description="Threads across independent operators; 0 lets onnxruntime choose.",
    )


class Batching(SpecModel):
    """Adaptive batching: concurrent requests are merged along the batch axis."""

    max_batch_size: int = Field(
        default=facts.MAX_BATCH_SIZE,
        ge=1,
        le=facts.MAX_BATCH_SIZE_LIMIT,
        description="Most rows in one onnxruntime run; 1 turns batching off.",
    )
    max_latency_ms: int = Field(
        default=facts.MAX_LATENCY_MS,
        ge=0,
        le=facts.MAX_LATENCY_MS_LIMIT,
        description="Longest a batch waits for company, in milliseconds: for requests "
        "already arriving, and (at most one typical run) for as many as were recently in "
        "flight at once; a lone request never waits.",
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=1,
        le=facts.MAX_QUEUED_REQUESTS_LIMIT,
        description="Requests that may wait for the compute lane; beyond it a request is "
        f"refused at once with 503 and Retry-After. Default: {facts.QUEUE_BATCHES} times "
        f"maxBatchSize, at least {facts.MIN_QUEUED_REQUESTS}.",
    )


WarmupShape = Annotated[
    dict[
        str,  # (no bounds on keys: a CRD schema has no propertyNames)
        Annotated[
            list[Annotated[int, Field(ge=1, le=facts.WARMUP_DIMENSION_LIMIT)]],
            Field(max_length=16),
        ],
    ],
    Field(min_length=1, max_length=64),
]


class Warmup(SpecModel):
    """Runs on generated inputs before the pod reports ready."""

    iterations: int = Field(
        default=facts.WARMUP_ITERATIONS,
        ge=0,
        le=facts.WARMUP_ITERATIONS_LIMIT,
        description="Warm-up runs at batch sizes 1 and maxBatchSize.",
    )
    shapes: list[WarmupShape] | None = Field(
        default=None,
        max_length=facts.WARMUP_SHAPES_LIMIT,
        description="Representative shapes for dynamic dimensions (sequence lengths, batch "
        "sizes): each item maps input names to a full shape; every item runs `iterations` "
        "times before the pod is ready. Inputs not named get batch 1, other dimensions 1.",
    )


class RuntimeSpec(SpecModel):
    """How the runtime serves the model."""

    image: Image | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Runtime image; defaults to the operator's (the GPU image with a GPU).",
    )
    execution_providers: list[ExecutionProvider] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="In order of preference; defaults to CUDA then CPU with a GPU, else CPU.",
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="Serve on CPU when the GPU provider cannot load; otherwise such a pod "
        "never becomes ready.",
    )
    graph_optimization_level: facts.GraphOptimizationLevel = Field(
        default="all", description="onnxruntime's graph optimisation level."
    )
    custom_operators: list[facts.CustomOperators] | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Custom operator libraries the model needs: onnxruntime-extensions "
        "(tokenizers, string, audio and image pre-processing inside the graph, domain "
        "ai.onnx.contrib; in modelplane's runtime images).",
    )
    threads: Threads = Field(default_factory=Threads, description="onnxruntime's thread pools.")
    batching: Batching = Field(
        default_factory=Batching, description="Adaptive batching of concurrent requests."
    )
    warmup: Warmup = Field(default_factory=Warmup, description="Warm-up before readiness.")
    startup_timeout_seconds: int | None = Field(
        default=None,
        ge=facts.STARTUP_TIMEOUT_SECONDS_MIN,
        le=facts.STARTUP_TIMEOUT_SECONDS_LIMIT,
        description="How long loading and warming up the model may take before the kubelet "
        "restarts the container (the startup probe); defaults to the operator's setting. The "
        "fetch runs before it, in its own init container, unbounded by this.",
    )
    request_timeout_seconds: int = Field(
        default=facts.REQUEST_TIMEOUT_SECONDS,
        ge=1,
        le=facts.REQUEST_TIMEOUT_SECONDS_LIMIT,
        description="Longest one inference request may take before a 504; also bounds "
        "the drain at shutdown.",
    )
    max_request_bytes: int = Field(
        default=facts.MAX_REQUEST_BYTES,
        ge=facts.MAX_REQUEST_BYTES_MIN,
        le=facts.MAX_REQUEST_BYTES_LIMIT,
        description="Largest request body accepted; a larger one is answered 413.",
    )


# --- spec.resources ---------------------------------------------------------


class ResourceAmounts(SpecModel):
    """Kubernetes quantities for the runtime container."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 512Mi or 4Gi.")
    ephemeral_storage: Quantity | None = Field(
        default=None,
        alias="ephemeral-storage",
        description="Local scratch disk, e.g. 10Gi (a fetched model counts against it).",
    )


class Gpu(SpecModel):
    """GPUs per replica; with none, no GPU appears anywhere in the pod."""

    count: int = Field(default=0, ge=0, le=64, description="GPUs per replica (whole devices).")
    resource_name: ExtendedResourceName = Field(
        default="nvidia.com/gpu",
        max_length=253,
        description="The device plugin's extended resource; the pods also tolerate a taint "
        "with this key.",
    )


class Resources(SpecModel):
    """What each replica requests; the memory limit defaults to the request."""

    requests: ResourceAmounts | None = Field(
        default=None, description="Requests; cpu and memory default to the operator's."
    )
    limits: ResourceAmounts | None = Field(
        default=None, description="Limits; memory defaults to the memory request."
    )
    gpu: Gpu = Field(default_factory=Gpu, description="GPUs per replica.")


# --- spec.autoscaling, scheduling, rollout ----------------------------------


AutoscalingEngine = Literal["hpa", "keda"]


class Autoscaling(SpecModel):
    """Who owns the replica count: a HorizontalPodAutoscaler, or KEDA (which can scale to 0)."""

    engine: AutoscalingEngine = Field(
        default="hpa",
        description="hpa: a HorizontalPodAutoscaler (pendingRequests needs a custom-metrics "
        "adapter). keda: a KEDA ScaledObject reading the runtime's metrics from Prometheus; "
        "with minReplicas 0 also a KEDA HTTP add-on HTTPScaledObject whose interceptor holds "
        "requests while the first pod starts.",
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas; 0 (engine keda only) scales to zero when idle.",
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    metric: Literal["cpu", "memory", "pendingRequests"] | None = Field(
        default=None,
        description="cpu/memory: average utilisation in percent of requests; "
        "pendingRequests: average in-flight requests per pod. Default: cpu with hpa, "
        "pendingRequests with keda.",
    )
    target: int = Field(
        default=70,
        ge=1,
        le=10000,
        description="The metric's target: percent of requests for cpu/memory, requests per "
        "pod for pendingRequests.",
    )
    idle_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="engine keda with minReplicas 0: how long without requests before the "
        "last replica goes.",
    )
    activation_timeout_seconds: int = Field(
        default=120,
        ge=5,
        le=3600,
        description="engine keda with minReplicas 0: how long the interceptor holds a request "
        "while the first replica starts; past it the request is refused, not held forever.",
    )

    rules = (
        CrossFieldRule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
            field_path=".minReplicas",
        ),
        CrossFieldRule(
            cel="self.minReplicas >= 1 || (has(self.engine) && self.engine == 'keda')",
            message="minReplicas 0 needs engine keda: a HorizontalPodAutoscaler cannot scale "
            "to zero; set engine: keda (with the KEDA HTTP add-on installed) or minReplicas >= 1",
            check=lambda a: a.min_replicas >= 1 or a.engine == "keda",
            field_path=".minReplicas",
        ),
    )

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0

    @property
    def effective_metric(self) -> str:
        if self.metric is not None:
            return self.metric
        return "pendingRequests" if self.engine == "keda" else "cpu"


class Toleration(SpecModel):
    """corev1.Toleration, with the API server's own checks at admission."""

    key: LabelKey | None = Field(
        default=None, max_length=317, description="Taint key; empty with Exists matches all."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Equal (the default) or Exists."
    )
    value: LabelValue | None = Field(
        default=None, max_length=63, description="Taint value, for Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )

    rules = (
        CrossFieldRule(
            cel="has(self.key) || (has(self.operator) && self.operator == 'Exists')",
            message="a toleration without a key must have operator Exists",
            check=lambda t: t.key is not None or t.operator == "Exists",
            field_path=".operator",
        ),
        CrossFieldRule(
            cel="!(has(self.operator) && self.operator == 'Exists' && has(self.value) "
            "&& self.value != '')",
            message="value must be empty when operator is Exists",
            check=lambda t: not (t.operator == "Exists" and t.value),
            field_path=".value",
        ),
        CrossFieldRule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds needs effect NoExecute",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field_path=".tolerationSeconds",
        ),
    )


AffinityTerm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class Affinity(SpecModel):
    """corev1.Affinity; its contents are checked by the API server on apply."""

    node_affinity: AffinityTerm | None = Field(default=None, description="corev1.NodeAffinity.")
    pod_affinity: AffinityTerm | None = Field(default=None, description="corev1.PodAffinity.")
    pod_anti_affinity: AffinityTerm | None = Field(
        default=None, description="corev1.PodAntiAffinity."
    )


class Scheduling(SpecModel):
    """Where the pods may run."""

    node_selector: Annotated[dict[str, LabelValue], AfterValidator(_label_keys)] = Field(
        default_factory=dict,
        max_length=64,
        json_schema_extra={"x-kubernetes-validations": [NODE_SELECTOR_RULE]},
        description="Node labels the pods require.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
        description="Taints the pods tolerate (a GPU's taint is added for you).",
    )
    affinity: Affinity | None = Field(default=None, description="Node and pod (anti-)affinity.")
    priority_class_name: DnsSubdomain | None = Field(
        default=None, max_length=253, description="A PriorityClass that must exist."
    )


class Rollout(SpecModel):
    """How a change rolls out (the Deployment's RollingUpdate strategy)."""

    max_surge: IntOrPercent = Field(
        default="25%", description="Extra pods during a rollout: a count or a percentage."
    )
    max_unavailable: IntOrPercent = Field(
        default=0, description="Pods that may be unavailable during a rollout."
    )
    progress_deadline_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="After this long without progress the ModelDeployment is Stalled.",
    )

    rules = (
        CrossFieldRule(
            # int-or-string: string() makes 0 and '0%' comparable in CEL.
            cel="!(string(self.maxSurge) in ['0', '0%'] "
            "&& string(self.maxUnavailable) in ['0', '0%'])",
            message="maxSurge and maxUnavailable cannot both be zero",
            check=lambda r: not (_is_zero(r.max_surge) and _is_zero(r.max_unavailable)),
        ),
    )


# --- spec.access ------------------------------------------------------------

AccessMode = Literal["Restricted", "Open"]


class Access(SpecModel):
    """Who may call the model."""

    mode: AccessMode = Field(
        default="Restricted",
        description="Restricted: only the ModelConsumers of this namespace granted this model, "
        "each with its key (Authorization: Bearer) and limits; with none, every call is "
        "refused 401. Open: anyone who reaches the Service.",
    )


# --- spec.route and spec.canary --------------------------------------------

HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_HOSTNAME = (HOSTNAME_PATTERN, "a DNS hostname, optionally starting with '*.'")
# A bound on the length bounds the cost of the CEL rule the API server estimates.
Hostname = Annotated[
    str, Field(max_length=253), _pattern_check(*_HOSTNAME), _pattern_rule(*_HOSTNAME)
]


class GatewayRef(SpecModel):
    """A Gateway API Gateway (gateway.networking.k8s.io/v1) the model's HTTPRoute attaches to."""

    name: DnsSubdomain = Field(min_length=1, max_length=253, description="The Gateway's name.")
    namespace: DnsLabel | None = Field(
        default=None,
        max_length=63,
        description="Its namespace; default: the ModelDeployment's. The Gateway's listener "
        "must allow routes from this namespace.",
    )
    section_name: DnsLabel | None = Field(
        default=None, max_length=253, description="One listener of the Gateway, by name."
    )


class Route(SpecModel):
    """An HTTPRoute in front of the model's Service: the address a canary splits."""

    gateway: GatewayRef = Field(description="The Gateway to attach to.")
    hostnames: list[Hostname] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
        description="Hostnames the route answers for; empty: the listener's.",
    )


class CanaryAnalysis(SpecModel):
    """When the canary is rolled back: bounds on what Prometheus saw it answer."""

    window_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="The window the error ratio and p99 are computed over (PromQL range).",
    )
    interval_seconds: int = Field(
        default=10, ge=5, le=600, description="How often the operator asks Prometheus."
    )
    max_error_ratio: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll back when the share of the canary's answers that are 5xx "
        "passes this (0.05 = 5%). Unset: not checked.",
    )
    max_p99_seconds: float | None = Field(
        default=None,
        ge=0.001,
        le=3600,
        description="Roll back when the canary's p99 request latency passes this. Unset: not "
        "checked.",
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="No verdict on fewer canary requests than this in the window.",
    )

    rules = (
        CrossFieldRule(
            cel="has(self.maxErrorRatio) || has(self.maxP99Seconds)",
            message="analysis needs a bound: set maxErrorRatio, maxP99Seconds or both",
            check=lambda a: a.max_error_ratio is not None or a.max_p99_seconds is not None,
        ),
        CrossFieldRule(
            cel="!has(self.intervalSeconds) || !has(self.windowSeconds) "
            "|| self.intervalSeconds <= self.windowSeconds",
            message="intervalSeconds must not be longer than windowSeconds",
            check=lambda a: a.interval_seconds <= a.window_seconds,
            field_path=".intervalSeconds",
        ),
    )


class Canary(SpecModel):
    """A second version beside the model, taking ``weight`` percent of the route's traffic
    once it is Ready."""

    model: ModelSource | None = Field(
        default=None, description="The canary's model; default: spec.model."
    )
    runtime: RuntimeSpec | None = Field(
        default=None, description="The canary's runtime settings; default: spec.runtime."
    )
    weight: int = Field(
        ge=0,
        le=100,
        description="Percent of the route's requests for the canary once it is Ready; 0 "
        "aborts (all traffic to the model, the canary kept for inspection).",
    )
    replicas: int = Field(default=1, ge=1, le=100, description="Canary replicas.")
    promote: bool = Field(
        default=False,
        description="true: the canary's spec becomes the model's. The model rolls to it while "
        "the canary keeps its share; once the model is Ready on it, all traffic goes to the "
        "model and the canary is removed.",
    )
    analysis: CanaryAnalysis | None = Field(
        default=None,
        description="Roll back (weight to 0, the reason in status.canary) when the canary's "
        "error ratio or p99 passes a bound. Needs the operator's Prometheus address.",
    )

    rules = (
        CrossFieldRule(
            cel="has(self.model) || has(self.runtime)",
            message="a canary changes something: set canary.model, canary.runtime or both",
            check=lambda c: c.model is not None or c.runtime is not None,
        ),
    )


# --- the whole spec ---------------------------------------------------------


def _providers_match_gpu(spec: ModelDeploymentSpec) -> bool:
    providers = spec.runtime.execution_providers
    if providers is None:
        return True
    wants_gpu = any(p in GPU_PROVIDERS for p in providers)
    return wants_gpu == (spec.resources.gpu.count > 0)


# A transition rule (it reads oldSelf), so only the API server applies it, on updates:
# `kubectl scale` writes spec.replicas through /scale, and while an HPA owns the count a
# stored value would only take effect, unexpectedly, when autoscaling is removed.
REPLICAS_WHILE_AUTOSCALING_RULE: dict[str, JsonValue] = {
    "rule": "!has(self.autoscaling) || !has(oldSelf.autoscaling) "
    "|| self.replicas == oldSelf.replicas",
    "message": "replicas cannot change while autoscaling is set: the HorizontalPodAutoscaler "
    "owns the replica count; change autoscaling.minReplicas/maxReplicas, or remove "
    "autoscaling first",
    "fieldPath": ".replicas",
}


class ModelDeploymentSpec(SpecModel):
    """The desired state of a served model."""

    model: ModelSource = Field(description="The ONNX model to serve.")
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec, description="How the runtime serves it."
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU, memory and GPUs per replica."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Replicas without autoscaling; while autoscaling is set the HPA owns the "
        "count and this field cannot change.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale with load; replaces replicas."
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Where the pods may run."
    )
    rollout: Rollout = Field(default_factory=Rollout, description="How changes roll out.")
    access: Access = Field(
        # A default the API server writes in, so `kubectl get -o yaml` shows the mode.
        default=Access(),
        description="Who may call it: its consumers, or anyone.",
    )
    route: Route | None = Field(
        default=None,
        description="Expose the model through a Gateway API Gateway (an HTTPRoute); needed "
        "for a canary.",
    )
    canary: Canary | None = Field(
        default=None, description="A second version taking a share of the route's traffic."
    )

    rules = (
        CrossFieldRule(
            cel="!has(self.runtime) || !has(self.runtime.executionProviders) || "
            "(self.runtime.executionProviders.exists(p, p != 'CPUExecutionProvider') == "
            "(has(self.resources) && has(self.resources.gpu) && has(self.resources.gpu.count) "
            "&& self.resources.gpu.count > 0))",
            message="runtime.executionProviders lists a GPU provider exactly when "
            "resources.gpu.count > 0: request a GPU, or use CPUExecutionProvider only",
            check=_providers_match_gpu,
            field_path=".runtime.executionProviders",
        ),
        CrossFieldRule(
            cel="!has(self.canary) || has(self.route)",
            message="a canary needs spec.route: its share of traffic is split by the "
            "HTTPRoute attached to spec.route.gateway",
            check=lambda s: s.canary is None or s.route is not None,
            field_path=".canary",
        ),
        CrossFieldRule(
            cel="!has(self.canary) || !has(self.autoscaling) || !has(self.autoscaling.minReplicas) "
            "|| self.autoscaling.minReplicas >= 1",
            message="a canary needs the model to keep a replica: set autoscaling.minReplicas "
            ">= 1 while spec.canary is set",
            check=lambda s: (
                s.canary is None or s.autoscaling is None or s.autoscaling.min_replicas >= 1
            ),
            field_path=".canary",
        ),
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        target = handler.resolve_ref_schema(schema)
        target["x-kubernetes-validations"].append(REPLICAS_WHILE_AUTOSCALING_RULE)
        return schema

    @property
    def restricted(self) -> bool:
        return self.access.mode == "Restricted"

    def execution_providers(self) -> tuple[str, ...]:
        """Explicit providers, else CUDA then CPU with a GPU, else CPU."""
        if self.runtime.execution_providers:
            return tuple(self.runtime.execution_providers)
        if self.resources.gpu.count > 0:
            return ("CUDAExecutionProvider", facts.CPU_PROVIDER)
        return (facts.CPU_PROVIDER,)


# --- status -----------------------------------------------------------------


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    """metav1.Condition."""

    type: str = Field(max_length=316, description="Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition was computed for."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed."
    )
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why, in one CamelCase word (e.g. Available, InvalidSpec, FailedCreate).",
    )
    message: str = Field(default="", max_length=32768, description="Why, for a person.")


class ModelStatus(StatusModel):
    """The model being served."""

    uri: str | None = Field(default=None, description="spec.model.uri as last applied.")
    sha256: str | None = Field(default=None, description="spec.model.sha256 as last applied.")
    cache: str | None = Field(
        default=None,
        description="How the newest pod got it from spec.model.cache: hit, miss, refilled (a "
        "corrupt entry fetched again) or bypassed (no room in the cache).",
    )


class CanaryStatus(StatusModel):
    """The canary as the operator sees it, and whether it was rolled back."""

    revision: str = Field(description="Digest of the canary's model and runtime spec.")
    ready_replicas: int = Field(default=0, description="Canary pods ready to serve.")
    weight: int = Field(
        default=0, description="Percent of the route's traffic the canary gets now."
    )
    rolled_back: bool = Field(
        default=False,
        description="True once the analysis rolled this revision back: it keeps weight 0 "
        "until spec.canary.model or spec.canary.runtime changes.",
    )
    reason: str | None = Field(
        default=None, description="Why the weight is what it is (e.g. ErrorRatio, NotReady)."
    )
    message: str | None = Field(default=None, description="Why, for a person.")


class ModelDeploymentStatus(StatusModel):
    """What the operator observed; Ready is True only when every replica is available."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation the operator last acted on."
    )
    url: str | None = Field(default=None, description="In-cluster base URL of the OIP API.")
    host: str | None = Field(
        default=None,
        description="With autoscaling.minReplicas 0: the Host header to send to url (the KEDA "
        "HTTP add-on's interceptor routes on it).",
    )
    replicas: int | None = Field(default=None, description="Pods of the Deployment.")
    ready_replicas: int | None = Field(default=None, description="Pods ready to serve.")
    selector: str | None = Field(
        default=None, description="The pods' label selector (for the scale subresource)."
    )
    model: ModelStatus | None = Field(default=None, description="The model being served.")
    canary: CanaryStatus | None = Field(default=None, description="The canary, when set.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Reconciling and Stalled (kstatus).",
    )


# --- the resource -----------------------------------------------------------


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: DnsLabel = Field(max_length=MAX_NAME_LENGTH)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class NamedResource(BaseModel):
    """What every modelplane resource has: its metadata, read by name and namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return str(self.metadata.name)

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


class ModelDeployment(NamedResource):
    api_version: Literal["modelplane.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelDeployment"]
    spec: ModelDeploymentSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _canary_name_fits(self) -> ModelDeployment:
        longest = MAX_NAME_LENGTH - len(CANARY_SUFFIX)
        if self.spec.canary is not None and len(self.metadata.name) > longest:
            raise PydanticCustomError(
                "cross_field",
                f"a model with a canary has a name of at most {longest} characters (its "
                f"canary's Deployment and Service add '{CANARY_SUFFIX}'): shorten the name",
                {"field_path": "metadata.name"},
            )
        return self


class InvalidSpecError(ValueError):
    """A ModelDeployment that cannot be served, with one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{part!r}]"
    return path or "(root)"


def _problem(error: Any, kind_name: str) -> str:
    path = _field_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == "cross_field":
        extra = error["ctx"]["field_path"]
        path = extra.lstrip(".") if path == "(root)" and extra else path + extra
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "extra_forbidden":
        return f"{path}: unknown field; remove it (see `kubectl explain {kind_name.lower()}.spec`)"
    if kind == "literal_error" and path in {"apiVersion", "kind"}:
        return f"{path}: must be {API_VERSION if path == 'apiVersion' else kind_name}"
    return f"{path}: {error['msg']}"


def problem_lines(exc: ValidationError, kind_name: str = KIND) -> list[str]:
    """One line per problem, each naming its field."""
    return [_problem(e, kind_name) for e in exc.errors(include_url=False)]


def parse_model_deployment(obj: dict[str, Any]) -> ModelDeployment:
    """Validate a ModelDeployment; raise InvalidSpecError naming every bad field."""
    if not isinstance(obj, dict):
        raise InvalidSpecError([f"(root): expected a {KIND} mapping, got {type(obj).__name__}"])
    try:
        return ModelDeployment.model_validate(obj)
    except ValidationError as exc:
        raise InvalidSpecError(problem_lines(exc)) from None
