"""Operator settings, read from ``MODELPLANE_OPERATOR_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelplane_api import facts
from modelplane_api.quantities import parse_quantity


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_OPERATOR_", extra="ignore", frozen=True
    )

    runtime_image: str = "ghcr.io/modelplane/runtime:0.1.0"
    runtime_gpu_image: str = "ghcr.io/modelplane/runtime-gpu:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    default_cpu_request: str = "1"
    default_memory_request: str = "2Gi"
    cluster_domain: str = "cluster.local"
    pre_stop_seconds: int = Field(default=5, ge=0, le=120)
    startup_timeout_seconds: int = Field(
        default=600, ge=30, description="How long model fetch-to-ready may take before a restart."
    )
    model_volume_size_limit: str | None = Field(
        default=facts.MODEL_VOLUME_SIZE_LIMIT,
        description="sizeLimit of the emptyDir a fetched model lands in; the fetch's byte cap.",
    )
    log_format: Literal["text", "json"] = "text"
    conflict_retry_seconds: float = Field(
        default=30.0, gt=0, description="How often to re-check a child in the way."
    )
    retry_cap_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between retries of a failing reconcile."
    )
    key_recheck_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="How often every ModelConsumer's key Secret is read again (Secrets are "
        "not watched): the bound on noticing one deleted or edited by hand.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus's HTTP API (e.g. http://prometheus-operated.monitoring:9090): "
        "KEDA's Prometheus trigger and canary analysis read the runtime's metrics there.",
    )
    keda_http_interceptor: str = Field(
        default=facts.KEDA_HTTP_INTERCEPTOR,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?:[0-9]{1,5}$",
        description="The KEDA HTTP add-on's interceptor proxy, as SERVICE.NAMESPACE:PORT: a "
        "model that scales to zero is called through it.",
    )
    keda_http_scaler: str = Field(
        default=facts.KEDA_HTTP_SCALER,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?:[0-9]{1,5}$",
        description="The add-on's external scaler, as SERVICE.NAMESPACE:PORT: KEDA asks it how "
        "many requests the interceptor holds.",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 turns it off.")
    metrics_address: str = "0.0.0.0"  # noqa: S104 - the pod's network namespace

    @field_validator("model_volume_size_limit")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        """A quantity of bytes: the fetch's byte cap is derived from it."""
        if value is not None and not (parse_quantity(value) or 0) >= 1:
            raise ValueError(f"{value!r} is not a size (a quantity such as 100Gi)")
        return value
