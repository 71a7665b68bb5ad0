"""One retry policy for every reconcile that could not finish.

Capped exponential backoff with jitter, at least the delay the reconcile asked
for (an API server's throttling, a child in the way), never giving up while the
cause persists, and cancelled by the next reconcile that succeeds, whatever
started it. Whether the reconcile came from a kopf handler or from a child's
event, it is retried here; kopf's own retries (and their annotations) are not
used.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger("modelplane.operator")


class Retrier:
    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 300.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rng = rng
        self._guard = threading.Lock()
        self._pending: dict[Hashable, tuple[int, threading.Timer]] = {}

    def delay(self, attempt: int, at_least: float) -> float:
        """Seconds before retry number ``attempt`` (0-based): doubling, capped, jittered,
        and never sooner than ``at_least``."""
        backoff = min(self.cap, self.base * 2**attempt)
        spread = 1 + self.jitter * (2 * self._rng() - 1)
        return float(max(at_least, backoff * spread))

    def schedule(self, key: Hashable, action: Callable[[], None], at_least: float = 0.0) -> float:
        """Run ``action`` later, replacing any retry pending for ``key``; the delay chosen."""
        with self._guard:
            attempt, previous = self._pending.get(key, (0, None))
            if previous is not None:
                previous.cancel()
            seconds = self.delay(attempt, at_least)
            timer = threading.Timer(seconds, action)
            timer.daemon = True
            self._pending[key] = (attempt + 1, timer)
            timer.start()
        return seconds

    def succeeded(self, key: Hashable) -> None:
        """The cause is gone: cancel the pending retry and start the backoff over."""
        with self._guard:
            pending = self._pending.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    def attempts(self, key: Hashable) -> int:
        with self._guard:
            return self._pending.get(key, (0, None))[0]

    def cancel_all(self) -> None:
        with self._guard:
            for _, timer in self._pending.values():
                timer.cancel()
            self._pending.clear()
