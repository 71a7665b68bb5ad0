"""One lock per ModelDeployment: its handlers, retries and child events never overlap."""

from __future__ import annotations

import threading

Key = tuple[str, str]


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}

    def __call__(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def drop(self, key: Key) -> None:
        with self._guard:
            self._locks.pop(key, None)
