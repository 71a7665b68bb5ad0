"""Who may call this model, and how fast: keys checked, limits enforced.

Only with an access file (``MODELPLANE_ACCESS_FILE``; ``serve --access``): see
modelplane_api.access for its shape. Without one the model is open, as before.

- A request carries ``Authorization: Bearer <key>``. The key is hashed (SHA-256)
  and looked up by digest: the runtime holds no key, only digests, and the
  lookup's timing can only say something about a digest of the caller's own
  input, which gives nothing towards a key; the final equality is
  ``hmac.compare_digest``. No key, an unknown or an expired key: 401 with
  ``WWW-Authenticate``. A known key not granted this model: 403.
- Limits are token buckets per consumer, for requests and (optionally) rows. Each
  replica enforces its share, ``limit / replicas``, with ``replicas`` from the
  access file (the operator keeps it at the Deployment's replica count): over it,
  429 with ``Retry-After`` (whole seconds until the bucket holds enough again).
- The file is re-read within ``ACCESS_RELOAD_SECONDS`` of a change: the kubelet
  swaps a mounted ConfigMap's files by renaming a symlink, so a change shows as a new
  inode. A file that does not parse keeps the last good table (logged, counted);
  a missing file at start refuses everyone until it appears (fail closed).
- Buckets survive a reload; a rotated key (a new digest beside the old one with
  ``notAfter``) and a revoked consumer (gone from the file) take effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelplane_api import facts
from modelplane_api.access import (
    ALL_MODELS,
    MAX_ACCESS_FILE_BYTES,
    AccessTable,
    Consumer,
    ConsumerLimits,
    InvalidAccessTable,
    parse_access_table,
)
from modelplane_runtime.batching import Usage
from modelplane_runtime.errors import Forbidden, TooManyRequests, Unauthorized
from modelplane_runtime.metrics import AccessMetrics, ConsumerMeter

log = logging.getLogger("modelplane.runtime")


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 rather than hashlib's OpenSSL one: same digests, but OpenSSL's
    EVP path (a context allocated, an engine looked up, a copy for ``digest()``) cost a
    restricted model 3-4% of its throughput under load (bench/runtime_versus.py
    --restricted), ten times what it costs in a loop. OpenSSL where a build lacks it."""
    for module in ("_sha2", "_sha256"):  # 3.12+, 3.11
        with contextlib.suppress(ImportError):
            function: Callable[[bytes], Any] = importlib.import_module(module).sha256
            return function
    return hashlib.sha256


_sha256 = _builtin_sha256()
_KEY = re.compile(rb"[\x21-\x7e]{1,512}")  # RFC 6750's token, bounded
_MAX_AUTHORIZATION = len(b"Bearer ") + 512


@dataclass(slots=True)
class _Bucket:
    """A token bucket: ``rate`` per second, at most ``capacity`` at once. A request of more
    than ``capacity`` units passes when the bucket is full and leaves it in debt."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> _Bucket:
        return cls(rate, capacity, capacity, now)

    def take(self, amount: float, now: float) -> float:
        """0 when taken, else the seconds until it could be. (Comparisons, not min(): this
        runs on every request of a restricted model.)"""
        capacity = self.capacity
        tokens = self.tokens + (now - self.updated) * self.rate
        tokens = tokens if tokens < capacity else capacity
        self.updated = now
        needed = amount if amount < capacity else capacity
        if tokens >= needed:
            self.tokens = tokens - amount
            return 0.0
        self.tokens = tokens
        return (needed - tokens) / self.rate

    def resized(self, rate: float, capacity: float, now: float) -> _Bucket:
        return _Bucket(rate, capacity, min(self.tokens, capacity), min(self.updated, now))


@dataclass(slots=True)
class ConsumerState:
    """One consumer as this replica sees it: its grant, its share of the limits, its meter."""

    name: str
    grant: Consumer
    meter: ConsumerMeter
    models: frozenset[str] | None = None  # None: every model
    requests: _Bucket | None = None
    rows: _Bucket | None = None
    limits_key: tuple[ConsumerLimits | None, int] = field(default=(None, 1))

    def usage(self) -> Usage:
        """A request's usage record, checking its rows against this consumer's row rate."""
        return Usage(self.admit_rows if self.rows is not None else None)

    def admit_rows(self, rows: int) -> None:
        if self.rows is None:
            return
        wait = self.rows.take(rows, time.monotonic())
        if wait:  # counted by the request's own outcome
            limits = self.grant.limits
            per_second = limits.rows_per_second if limits else None
            raise TooManyRequests(
                f"consumer '{self.name}' is over its row rate ({per_second:g} rows/s for the "
                f"model); this request has {rows} rows; retry later",
                retry_after=_whole_seconds(wait),
            )


@dataclass(frozen=True, slots=True)
class _Key:
    digest: bytes
    consumer: ConsumerState
    not_after: float | None  # epoch seconds


class AccessControl:
    def __init__(
        self,
        path: Path,
        model: str,
        metrics: AccessMetrics,
    ) -> None:
        self.path = path
        self.model = model
        self.metrics = metrics
        self._keys: dict[bytes, _Key] = {}
        self._consumers: dict[str, ConsumerState] = {}
        self._seen: tuple[int, int, int, int] | None = None  # (device, inode, size, mtime)
        self._failed: tuple[int, int, int, int] | None = None

    # --- the table ------------------------------------------------------------------

    def load(self) -> None:
        """Read the file now; raise when it is missing or invalid (a command line says so)."""
        signature = _signature(self.path)
        self._install(parse_access_table(_read(self.path)))
        self._seen = signature

    def refresh(self) -> None:
        """Re-read the file if it changed; a bad file keeps the last good table."""
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if self._failed != (0, 0, 0, 0):
                log.error("access file %s is unreadable (%s): the last table stays", self.path, exc)
                self.metrics.reloaded("unreadable")
                self._failed = (0, 0, 0, 0)
            return
        if signature in (self._seen, self._failed):
            return
        self._install_parsed(signature, _parsed(self.path))

    def _install_parsed(
        self, signature: tuple[int, int, int, int], parsed: AccessTable | Exception
    ) -> None:
        if isinstance(parsed, Exception):
            log.error("access file %s is invalid (%s): the last table stays", self.path, parsed)
            self.metrics.reloaded("invalid")
            self._failed = signature
            return
        self._install(parsed)
        self._seen, self._failed = signature, None
        self.metrics.reloaded("loaded")

    async def watch(self) -> None:
        """Re-read the file when it changes; it is read and parsed on a worker thread (a
        large file takes hundreds of milliseconds), and installed on the event loop."""
        while True:
            await asyncio.sleep(facts.ACCESS_RELOAD_SECONDS)
            try:
                signature = _signature(self.path)
            except OSError:
                self.refresh()  # says why, once
                continue
            if signature in (self._seen, self._failed):
                continue
            # Said before the read, as the table's own line is after it: how long a reload
            # took shows in the log (and a test sees the loop answer probes in between).
            log.info("access file %s changed: reading it", self.path)
            parsed = await asyncio.to_thread(_parsed, self.path)
            self._install_parsed(signature, parsed)

    def _install(self, table: AccessTable) -> None:
        now = time.monotonic()
        consumers: dict[str, ConsumerState] = {}
        keys: dict[bytes, _Key] = {}
        for grant in table.consumers:
            state = self._consumers.get(grant.name) or ConsumerState(
                grant.name, grant, self.metrics.meter(grant.name)
            )
            state.grant = grant
            state.models = None if ALL_MODELS in grant.models else frozenset(grant.models)
            _share_limits(state, grant.limits, table.replicas, now)
            consumers[grant.name] = state
            for key in grant.keys:
                digest = bytes.fromhex(key.sha256)
                expires = key.not_after.timestamp() if key.not_after else None
                keys[digest] = _Key(digest, state, expires)
        self.metrics.forget(set(self._consumers) - set(consumers))
        self._consumers, self._keys = consumers, keys
        self.metrics.consumers(len(consumers))
        log.info(
            "access: %d consumers, %d keys, limits shared by %d replicas",
            len(consumers),
            len(keys),
            table.replicas,
        )

    # --- requests -------------------------------------------------------------------

    def admit(
        self, authorization: bytes | None, model: str | None, *, inference: bool
    ) -> ConsumerState:
        """The consumer calling, if it may call ``model`` now (None: no model named).
        ``authorization`` is the header's raw value. An ``inference`` request refused here
        is counted in the consumer's usage."""
        key = None
        # The path every admitted request takes is kept short: hash what follows
        # "Bearer ", look the digest up. Why a request without a match is refused is
        # worked out only then (_unauthorized).
        if (
            authorization is not None
            and len(authorization) <= _MAX_AUTHORIZATION
            and authorization[:7].lower() == b"bearer "
        ):
            digest = _sha256(authorization[7:]).digest()
            key = self._keys.get(digest)
            if key is not None and not hmac.compare_digest(key.digest, digest):
                key = None
        if key is None:
            raise self._unauthorized(authorization)
        if key.not_after is not None and time.time() >= key.not_after:
            self.metrics.refused("expired_key")
            raise Unauthorized(
                "the key was rotated out and its overlap has ended; use the new key",
                error="invalid_token",
            )
        consumer = key.consumer
        if model is not None and consumer.models is not None and model not in consumer.models:
            if inference:
                consumer.meter.outcome("403")
            raise Forbidden(f"consumer '{consumer.name}' is not granted model '{model}'")
        if consumer.requests is not None:
            wait = consumer.requests.take(1, time.monotonic())
            if wait:
                if inference:
                    consumer.meter.outcome("429")
                raise TooManyRequests(
                    f"consumer '{consumer.name}' is over its request rate "
                    f"({_rate(consumer.grant.limits)}); retry later",
                    retry_after=_whole_seconds(wait),
                )
        return consumer

    def _unauthorized(self, authorization: bytes | None) -> Unauthorized:
        """Why a request whose header matched no key is refused, counted by reason."""
        if authorization is None:
            self.metrics.refused("missing_key")
            return Unauthorized("this model needs a key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not _KEY.fullmatch(token):
            self.metrics.refused("malformed")
            return Unauthorized(
                "the Authorization header must be 'Bearer <key>'", error="invalid_request"
            )
        self.metrics.refused("unknown_key")
        return Unauthorized("the key is not valid for this model", error="invalid_token")


def _share_limits(
    state: ConsumerState, limits: ConsumerLimits | None, replicas: int, now: float
) -> None:
    if state.limits_key == (limits, replicas):
        return
    state.limits_key = (limits, replicas)
    if limits is None:
        state.requests = state.rows = None
        return
    rate = limits.requests_per_second / replicas
    state.requests = _bucket(state.requests, rate, max(1.0, limits.burst / replicas), now)
    if limits.rows_per_second is None:
        state.rows = None
        return
    row_rate = limits.rows_per_second / replicas
    state.rows = _bucket(state.rows, row_rate, max(1.0, row_rate), now)  # a second's worth


def _bucket(old: _Bucket | None, rate: float, capacity: float, now: float) -> _Bucket:
    """A bucket at the new rate and capacity, keeping what ``old`` held."""
    return old.resized(rate, capacity, now) if old else _Bucket.full(rate, capacity, now)


def _rate(limits: ConsumerLimits | None) -> str:
    if limits is None:
        return "no limit"
    return f"{limits.requests_per_second:g} requests/s, burst {limits.burst}, for the model"


def _whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def _signature(path: Path) -> tuple[int, int, int, int]:
    stat = os.stat(path)  # follows the kubelet's symlinks to the current file
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _parsed(path: Path) -> AccessTable | Exception:
    """The file's table, or why it has none (on a worker thread: nothing shared is touched)."""
    try:
        return parse_access_table(_read(path))
    except (OSError, InvalidAccessTable) as exc:
        return exc


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_ACCESS_FILE_BYTES + 1)
