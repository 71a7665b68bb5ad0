"""The ModelConsumer resource: one consumer (an application, a team) of the models in
its namespace, with its key, grants and limits.

The operator keeps the consumer's key in a Secret it creates (and only there); the
status carries what may be shown of a key (its SHA-256 digest, a verifier that cannot
be turned back into the key, and a short fingerprint), and the operator builds each
restricted model's access description (modelplane_api.access) from the specs and
statuses of the consumers granted it.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from modelplane_api import access, names
from modelplane_api.spec import (
    NAME_PATTERN,
    Condition,
    CrossFieldRule,
    DnsSubdomain,
    InvalidSpecError,
    NamedResource,
    SpecModel,
    StatusModel,
    problem_lines,
)

KEY_SECRET_SUFFIX = "-key"  # noqa: S105 - a name, not a password
KEY_SECRET_DATA = "key"  # noqa: S105 - the Secret's data key holding the consumer's key
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
DEFAULT_OVERLAP_SECONDS = 3600
MAX_MODELS = 256
ROTATION_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?$"

ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=names.MAX_NAME_LENGTH,
        pattern=r"^(\*|" + NAME_PATTERN[1:-1] + r")$",
        description='A ModelDeployment in this namespace, or "*" for all of them.',
    ),
]


class ConsumerKeySpec(SpecModel):
    """Where the consumer's key goes, and when a new one is made."""

    secret_name: DnsSubdomain | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=f"The Secret the operator creates, holding the key under "
        f"`{KEY_SECRET_DATA}`; defaults to <name>{KEY_SECRET_SUFFIX}. It must not exist "
        "already unless this ModelConsumer created it. Changing it issues a new key there; "
        "the key in the Secret named before keeps working for overlapSeconds.",
    )
    rotation: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=ROTATION_PATTERN,
        description="Set or change this to any new value (a date, a counter) to issue a new "
        "key; the previous key keeps working for overlapSeconds, then stops.",
    )
    overlap_seconds: int = Field(
        default=DEFAULT_OVERLAP_SECONDS,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="How long a rotated-out key keeps working, in seconds (at most 7 days).",
    )


class ConsumerLimitsSpec(SpecModel):
    """The consumer's limits across all replicas of each model it calls."""

    requests_per_second: int = Field(
        ge=1, le=1_000_000, description="Sustained requests per second, per model."
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Requests that may arrive at once above the rate; defaults to "
        "requestsPerSecond.",
    )
    rows_per_second: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Sustained rows (the batch dimension) per second, per model.",
    )


class ModelConsumerSpec(SpecModel):
    """Which models the consumer may call, how fast, and where its key goes."""

    models: list[ModelName] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description='The ModelDeployments in this namespace it may call; ["*"] for all.',
    )
    limits: ConsumerLimitsSpec | None = Field(
        default=None, description="Rate limits; omit for none."
    )
    key: ConsumerKeySpec = Field(
        default_factory=ConsumerKeySpec, description="Its key's Secret and rotation."
    )

    rules = (
        CrossFieldRule(
            cel="!self.models.exists(m, m == '*') || size(self.models) == 1",
            message='models is either ["*"] or a list of names, not both',
            check=lambda s: access.ALL_MODELS not in s.models or len(s.models) == 1,
            field_path=".models",
        ),
    )

    def grants(self, model: str) -> bool:
        return access.ALL_MODELS in self.models or model in self.models


class ConsumerKeyStatus(StatusModel):
    """A key that works now: never the key, only what identifies it."""

    fingerprint: str = Field(max_length=64, description="sha256: and the digest's first 16.")
    sha256: str = Field(
        max_length=64, description="The key's SHA-256 digest (what the runtime compares)."
    )
    not_after: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="A rotated-out key stops working then.",
    )


class ModelConsumerStatus(StatusModel):
    """What the operator did: the key's Secret, the keys that work, the models granted."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation the operator last acted on."
    )
    key_secret_name: str | None = Field(default=None, description="The Secret with the key.")
    rotation: str | None = Field(
        default=None, description="spec.key.rotation as the current key was issued for."
    )
    keys: list[ConsumerKeyStatus] = Field(
        default_factory=list, description="The keys that work, newest first."
    )
    models: list[str] = Field(
        default_factory=list, description="The ModelDeployments it may call now."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Reconciling and Stalled (kstatus).",
    )


class ModelConsumer(NamedResource):
    api_version: Literal["modelplane.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelConsumer"]
    spec: ModelConsumerSpec
    status: dict[str, Any] | None = None

    @property
    def key_secret_name(self) -> str:
        return self.spec.key.secret_name or self.name + KEY_SECRET_SUFFIX


def parse_model_consumer(obj: dict[str, Any]) -> ModelConsumer:
    """Validate a ModelConsumer; raise InvalidSpecError naming every bad field."""
    if not isinstance(obj, dict):
        raise InvalidSpecError(
            [f"(root): expected a {names.CONSUMER_KIND} mapping, got {type(obj).__name__}"]
        )
    try:
        return ModelConsumer.model_validate(obj)
    except ValidationError as exc:
        raise InvalidSpecError(problem_lines(exc, names.CONSUMER_KIND)) from None


def status_keys(status: dict[str, Any] | None, now: datetime.datetime) -> list[access.KeyDigest]:
    """The keys a consumer's status says work at ``now``: what an access table lists."""
    found: list[access.KeyDigest] = []
    for entry in (status or {}).get("keys") or []:
        try:
            key = ConsumerKeyStatus.model_validate(entry)
            digest = access.KeyDigest(
                sha256=key.sha256,
                not_after=datetime.datetime.fromisoformat(key.not_after) if key.not_after else None,
            )
        except (ValidationError, ValueError):
            continue  # a status not written by this operator's version: skipped, not trusted
        if digest.not_after is None or digest.not_after > now:
            found.append(digest)
    return found[: access.MAX_KEYS_PER_CONSUMER]


def access_table(
    consumers: list[ModelConsumer], replicas: int, now: datetime.datetime
) -> access.AccessTable:
    """The access description a restricted model's pods enforce: every consumer of the
    namespace with a working key and its grants (so a valid key not granted the model is
    told 403, not 401), in name order (an unchanged set renders the same bytes)."""
    ordered = sorted(consumers, key=lambda c: c.name)
    keys_of = {c.name: status_keys(c.status, now) for c in ordered}
    # A key two consumers share (copied by hand between Secrets) identifies neither.
    seen = Counter(k.sha256 for keys in keys_of.values() for k in keys)
    entries = []
    for consumer in ordered:
        keys = [k for k in keys_of[consumer.name] if seen[k.sha256] == 1]
        if not keys:
            continue
        limits = consumer.spec.limits
        entries.append(
            access.Consumer(
                name=consumer.name,
                models=list(consumer.spec.models),
                keys=keys,
                limits=access.ConsumerLimits(
                    requests_per_second=limits.requests_per_second,
                    burst=limits.burst or limits.requests_per_second,
                    rows_per_second=limits.rows_per_second,
                )
                if limits
                else None,
            )
        )
    return access.AccessTable(replicas=max(1, replicas), consumers=entries)
