"""Runtime settings, read from ``MODELPLANE_*`` environment variables.

This class is the contract between operator and runtime: the operator renders
its pod environment with :meth:`RuntimeSettings.to_env` of
:func:`runtime_settings`, so it can only ever render variables this class reads.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelplane_api import facts
from modelplane_api.facts import CustomOperators, ExecutionProvider, GraphOptimizationLevel
from modelplane_api.spec import ModelDeployment, is_model_tree

ENV_PREFIX = "MODELPLANE_"


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_name: str = Field(default="model", min_length=1, max_length=253)
    model_path: Path = Path(facts.MODEL_DIR) / facts.FETCHED_MODEL_FILE
    model_sha256: str | None = Field(default=None, pattern=facts.SHA256_PATTERN)
    # When model_path is a directory: the graph file in it (none: its only .onnx file).
    model_graph: str | None = Field(default=None, min_length=1, max_length=1024)
    execution_providers: Annotated[tuple[ExecutionProvider, ...], NoDecode] = (facts.CPU_PROVIDER,)
    custom_operators: Annotated[tuple[CustomOperators, ...], NoDecode] = ()
    allow_cpu_fallback: bool = False
    intra_op_threads: int = Field(default=0, ge=0, le=facts.THREADS_LIMIT)
    inter_op_threads: int = Field(default=0, ge=0, le=facts.THREADS_LIMIT)
    graph_optimization_level: GraphOptimizationLevel = "all"
    max_batch_size: int = Field(default=facts.MAX_BATCH_SIZE, ge=1, le=facts.MAX_BATCH_SIZE_LIMIT)
    max_latency_ms: int = Field(default=facts.MAX_LATENCY_MS, ge=0, le=facts.MAX_LATENCY_MS_LIMIT)
    warmup_iterations: int = Field(
        default=facts.WARMUP_ITERATIONS, ge=0, le=facts.WARMUP_ITERATIONS_LIMIT
    )
    # JSON: a list of {input name: shape} to warm up with (none: generated batch sizes).
    warmup_shapes: Annotated[tuple[dict[str, tuple[int, ...]], ...], NoDecode] | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=facts.HTTP_PORT, ge=1, le=65535)
    # The Open Inference Protocol over gRPC, on the same host; 0: REST only.
    grpc_port: int = Field(default=facts.GRPC_PORT, ge=0, le=65535)
    request_timeout_seconds: int = Field(
        default=facts.REQUEST_TIMEOUT_SECONDS, ge=1, le=facts.REQUEST_TIMEOUT_SECONDS_LIMIT
    )
    max_queued_requests: int | None = Field(default=None, ge=1, le=facts.MAX_QUEUED_REQUESTS_LIMIT)
    max_request_bytes: int = Field(
        default=facts.MAX_REQUEST_BYTES,
        ge=facts.MAX_REQUEST_BYTES_MIN,
        le=facts.MAX_REQUEST_BYTES_LIMIT,
    )
    header_timeout_seconds: float = Field(
        default=facts.HEADER_TIMEOUT_SECONDS, gt=0, le=facts.CONNECTION_TIMEOUT_LIMIT
    )
    body_idle_seconds: float = Field(
        default=facts.BODY_IDLE_SECONDS, gt=0, le=facts.CONNECTION_TIMEOUT_LIMIT
    )
    keep_alive_seconds: float = Field(
        default=facts.KEEP_ALIVE_SECONDS, gt=0, le=facts.CONNECTION_TIMEOUT_LIMIT
    )
    max_header_bytes: int = Field(
        default=facts.MAX_HEADER_BYTES, ge=1024, le=facts.MAX_HEADER_BYTES_LIMIT
    )
    # Where a model that cannot load says why as the process exits (the kubelet's default).
    termination_message_path: Path = Path(facts.TERMINATION_MESSAGE_PATH)
    # The pod's memory limit, for the request memory budget; unset: the cgroup's limit.
    memory_limit_bytes: int | None = Field(default=None, ge=1)
    max_connections: int = Field(
        default=facts.MAX_CONNECTIONS, ge=1, le=facts.MAX_CONNECTIONS_LIMIT
    )
    # Set: only consumers this file names may call the model (see modelplane_api.access).
    access_file: Path | None = None

    @property
    def queue_limit(self) -> int:
        """Requests that may wait for the compute lane: set, or a few full batches."""
        derived = max(facts.MIN_QUEUED_REQUESTS, facts.QUEUE_BATCHES * self.max_batch_size)
        return self.max_queued_requests or derived

    @field_validator("warmup_shapes", mode="before")
    @classmethod
    def _parse_shapes(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("execution_providers", "custom_operators", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    def to_env(self) -> dict[str, str]:
        """Every field set explicitly as ``MODELPLANE_<FIELD>``, in field order (defaults stay
        the runtime's own)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True, exclude_unset=True).items():
            if name == "warmup_shapes":
                text = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env


def model_location(md: ModelDeployment) -> tuple[str, str]:
    """(how the model reaches the pod, the path the runtime loads): fetch, pvc or image.
    A pvc:// or file:// model with copyToPod is fetched (copied) like a remote one."""
    uri = urlsplit(md.spec.model.uri)
    if uri.scheme == "file" and not md.spec.model.copy_to_pod:
        return "image", uri.path
    if uri.scheme == "pvc" and not md.spec.model.copy_to_pod:
        return "pvc", str(PurePosixPath(facts.MODEL_DIR) / uri.path.lstrip("/"))
    if is_model_tree(md.spec.model.uri):
        return "fetch", f"{facts.MODEL_DIR}/{facts.FETCHED_MODEL_DIR}"
    return "fetch", f"{facts.MODEL_DIR}/{facts.FETCHED_MODEL_FILE}"


def fetch_uri(md: ModelDeployment) -> str:
    """What the fetch container copies from: the model's URI, or for a pvc:// model copied
    into the pod, the claim's path where the fetch container mounts it."""
    uri = urlsplit(md.spec.model.uri)
    if uri.scheme == "pvc":
        return f"file://{facts.MODEL_SOURCE_DIR}/{uri.path.lstrip('/')}"
    return md.spec.model.uri


def runtime_settings(md: ModelDeployment) -> RuntimeSettings:
    """The runtime's settings for this ModelDeployment: the pod's environment, and what
    `modelplane serve -f` uses on a laptop."""
    spec = md.spec
    source, model_path = model_location(md)
    return RuntimeSettings(
        model_name=md.name,
        model_path=Path(model_path),
        # A fetched model is verified by the init container; others by the runtime.
        model_sha256=spec.model.sha256 if source != "fetch" else None,
        model_graph=spec.model.graph,
        execution_providers=spec.execution_providers(),
        allow_cpu_fallback=spec.runtime.allow_cpu_fallback,
        intra_op_threads=spec.runtime.threads.intra_op,
        inter_op_threads=spec.runtime.threads.inter_op,
        graph_optimization_level=spec.runtime.graph_optimization_level,
        max_batch_size=spec.runtime.batching.max_batch_size,
        max_latency_ms=spec.runtime.batching.max_latency_ms,
        max_queued_requests=spec.runtime.batching.max_queued_requests,
        warmup_iterations=spec.runtime.warmup.iterations,
        warmup_shapes=(
            tuple({k: tuple(v) for k, v in item.items()} for item in spec.runtime.warmup.shapes)
            if spec.runtime.warmup.shapes
            else None
        ),
        host="0.0.0.0",  # noqa: S104 - the pod's network namespace
        port=facts.HTTP_PORT,
        request_timeout_seconds=spec.runtime.request_timeout_seconds,
        max_request_bytes=spec.runtime.max_request_bytes,
        **_only_when_set(custom_operators=tuple(spec.runtime.custom_operators or ())),
        # The operator mounts the access description there (see render.py).
        access_file=Path(facts.ACCESS_DIR) / facts.ACCESS_FILE if spec.restricted else None,
    )


def _only_when_set(**values: Any) -> dict[str, Any]:
    """Settings passed only when not empty, so the pod's environment leaves them out."""
    return {key: value for key, value in values.items() if value}
