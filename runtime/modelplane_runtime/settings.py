"""Runtime settings, read from ``MODELPLANE_*`` environment variables.

This class is the contract between operator and runtime: the operator renders
its pod environment with :meth:`RuntimeSettings.to_env`, so it can only ever
render variables this class reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MODELPLANE_"

ExecutionProvider = Literal[
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
]
GPU_PROVIDERS: frozenset[str] = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
GraphOptimizationLevel = Literal["disabled", "basic", "extended", "all"]


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_name: str = Field(default="model", min_length=1, max_length=253)
    model_path: Path = Path("/mnt/models/model.onnx")
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    execution_providers: Annotated[tuple[ExecutionProvider, ...], NoDecode] = (
        "CPUExecutionProvider",
    )
    allow_cpu_fallback: bool = False
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=0, ge=0)
    graph_optimization_level: GraphOptimizationLevel = "all"
    max_batch_size: int = Field(default=32, ge=1)
    max_latency_ms: int = Field(default=5, ge=0)
    warmup_iterations: int = Field(default=3, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    request_timeout_seconds: int = Field(default=60, ge=1)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @field_validator("execution_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    def to_env(self) -> dict[str, str]:
        """Every set field as ``MODELPLANE_<FIELD>``, in field order."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env
