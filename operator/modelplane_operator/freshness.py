"""The operator's own writes, remembered until its watch cache has caught up with them.

kopf's indexes follow the watch, a moment behind the API server. A reconcile
started by an event queued before the operator's own write (the Deployment
controller's status update of the old version, say) would otherwise see the
old object and apply again, and a child just deleted would be deleted again
(measured on a real API server: 4 applies for one drift, 4 DELETEs answered 404).

A lookup returns the newer of what the cache (or the event) shows and what the
operator last wrote, by resourceVersion. The API's contract calls
resourceVersions opaque; every etcd-backed API server issues them as increasing
integers, and where either is not an integer the cache wins. A record goes once
the cache has caught up, when the watch echoes the write back (``echo``), or after
``ttl`` seconds whatever happens: records past it are swept on the next write or
event, so objects written once and never looked up again are not held for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class _Record:
    obj: Obj  # the applied object, or the deleted one
    deleted: bool
    at: float


def _version(obj: Mapping[str, Any] | None) -> int | None:
    text = str((obj or {}).get("metadata", {}).get("resourceVersion", ""))
    return int(text) if text.isdigit() else None


def _uid(obj: Mapping[str, Any] | None) -> str | None:
    uid = (obj or {}).get("metadata", {}).get("uid")
    return str(uid) if uid else None


class RecentWrites:
    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._guard = threading.Lock()
        self._records: dict[Key, _Record] = {}
        self._swept = clock()

    def applied(self, key: Key, obj: Obj, cached: Obj | None = None) -> None:
        """``obj`` written; ``cached``: what the cache holds now. A write whose echo came
        back before the write returned (the cache holds it already) is not remembered:
        the echo that would end its record has been and gone."""
        record = _Record(obj, deleted=False, at=self._clock())
        if cached is not None and _caught_up(record, cached, None):
            return
        self._put(key, record)

    def deleted(self, key: Key, obj: Obj) -> None:
        self._put(key, _Record(obj, deleted=True, at=self._clock()))

    def _put(self, key: Key, record: _Record) -> None:
        with self._guard:
            self._records[key] = record
            self._sweep(record.at)

    def _sweep(self, now: float) -> None:
        """Drop records past the TTL, at most once a TTL (the guard is held)."""
        if now - self._swept > self._ttl:
            self._swept = now
            for old in [k for k, r in self._records.items() if now - r.at > self._ttl]:
                del self._records[old]

    def echo(self, key: Key, seen: Obj) -> bool:
        """Is ``seen`` (a watch event's object) exactly what the operator last applied? Then
        the reconcile that applied it has seen it already, and the record goes: the cache
        (kopf indexes an event before its handlers run) holds it now."""
        with self._guard:
            self._sweep(self._clock())
            record = self._records.get(key)
            if record is None or record.deleted:
                return False
            mine, theirs = _version(record.obj), _version(seen)
            if mine is None or mine != theirs or _uid(record.obj) != _uid(seen):
                return False
            del self._records[key]
            return True

    def forget(self, namespace: str, name: str) -> None:
        """Drop every record of the children named ``name`` (they share their owner's name)."""
        with self._guard:
            for key in [k for k in self._records if k[1:] == (namespace, name)]:
                del self._records[key]

    def fresher(self, key: Key, seen: Obj | None, tombstone: Obj | None = None) -> Obj | None:
        """The newest known state of ``key``: ``seen`` (from the cache or an event; None when
        absent, with the deleted object as ``tombstone`` if an event said so) or our write."""
        with self._guard:
            record = self._records.get(key)
            if record is None:
                return seen
            if self._clock() - record.at <= self._ttl and not _caught_up(record, seen, tombstone):
                return None if record.deleted else record.obj
            del self._records[key]
            return seen


def _caught_up(record: _Record, seen: Obj | None, tombstone: Obj | None) -> bool:
    if record.deleted:  # caught up once the cache no longer shows the deleted object
        return seen is None or _uid(seen) != _uid(record.obj)
    if seen is None and tombstone is None:
        return False  # the cache has not seen the creation yet
    mine, theirs = _version(record.obj), _version(seen if seen is not None else tombstone)
    # Not comparable: trust the cache.
    return mine is None or theirs is None or theirs >= mine
