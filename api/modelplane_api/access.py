"""Who may call a model, how fast: the access description the runtime enforces.

The operator writes one per restricted ModelDeployment (into a Secret the pods
mount); ``modelplane serve --access FILE`` reads the same file on a laptop. It
holds the SHA-256 digests of consumers' keys, never a key: a key is 256 random
bits, so its digest can be neither reversed nor guessed, and the runtime only
ever compares digests.

    {"replicas": 3,
     "consumers": [{"name": "team-a", "models": ["*"],
                    "keys": [{"sha256": "<64 hex>"},
                             {"sha256": "<64 hex>", "notAfter": "2026-12-01T10:00:00Z"}],
                    "limits": {"requestsPerSecond": 50, "burst": 100, "rowsPerSecond": 2000}}]}

``replicas`` is how many replicas share each consumer's limits: each enforces its
share (limit / replicas), so a consumer's limit holds for the whole deployment.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from modelplane_api.facts import SHA256_PATTERN

KEY_PREFIX = "mp_"  # lets secret scanners recognise a leaked key
KEY_BYTES = 32
ALL_MODELS = "*"
MAX_CONSUMERS = 10_000
MAX_KEYS_PER_CONSUMER = 4  # the current key, and keys still inside a rotation's overlap
MAX_ACCESS_FILE_BYTES = 16 * 1024 * 1024
CONSUMER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME_PATTERN = r"^(\*|[a-z]([-a-z0-9]*[a-z0-9])?)$"


def new_key() -> str:
    """A fresh consumer key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(digest: str) -> str:
    """What status and logs may show of a key: enough to tell two keys apart."""
    return f"sha256:{digest[:16]}"


class _AccessModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class KeyDigest(_AccessModel):
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the key, hex")
    not_after: datetime.datetime | None = Field(
        default=None, description="a rotated-out key works until then (RFC 3339, with zone)"
    )

    @model_validator(mode="after")
    def _zoned(self) -> KeyDigest:
        if self.not_after is not None and self.not_after.tzinfo is None:
            raise ValueError("notAfter needs a time zone, e.g. 2026-12-01T10:00:00Z")
        return self


class ConsumerLimits(_AccessModel):
    requests_per_second: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000, description="requests that may come at once")
    rows_per_second: float | None = Field(
        default=None, gt=0, le=1_000_000_000, description="rows (the batch axis) per second"
    )


class Consumer(_AccessModel):
    name: str = Field(min_length=1, max_length=253, pattern=CONSUMER_NAME_PATTERN)
    models: list[Annotated[str, Field(pattern=MODEL_NAME_PATTERN, max_length=63)]] = Field(
        min_length=1, max_length=1000, description='the models granted; "*" is every model'
    )
    keys: list[KeyDigest] = Field(min_length=1, max_length=MAX_KEYS_PER_CONSUMER)
    limits: ConsumerLimits | None = None  # none: no limit


class AccessTable(_AccessModel):
    replicas: int = Field(default=1, ge=1, le=100_000)
    consumers: list[Consumer] = Field(default_factory=list, max_length=MAX_CONSUMERS)

    @model_validator(mode="after")
    def _unique(self) -> AccessTable:
        names = [c.name for c in self.consumers]
        if len(set(names)) != len(names):
            raise ValueError("consumer names must be unique")
        digests = [k.sha256 for c in self.consumers for k in c.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("a key digest appears twice")
        return self


class InvalidAccessTable(ValueError):
    """The access description cannot be used; the message says where and why."""


def parse_access_table(text: bytes) -> AccessTable:
    if len(text) > MAX_ACCESS_FILE_BYTES:
        raise InvalidAccessTable(f"over {MAX_ACCESS_FILE_BYTES} bytes")
    try:
        return AccessTable.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidAccessTable(f"{where}: {first['msg']}{more}") from None


def render_access_table(table: AccessTable) -> str:
    document: dict[str, Any] = table.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(document, indent=1, sort_keys=True) + "\n"
