"""A background pass over every ModelConsumer, every ``KEY_RECHECK_SECONDS``.

The operator may not list or watch Secrets (it must not be able to follow Secrets it
did not create), so a key Secret deleted or edited by hand is no event it sees. This
pass reconciles each ModelConsumer again, which reads its Secret (one GET each) and
does the rest: a Secret deleted by hand gets a new key, and the old key stops working.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("modelplane.operator")


class Sweep:
    """Runs ``run`` every ``interval`` seconds on a thread of its own, from the first
    ``start`` (later calls change nothing) until ``stop``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopped = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, run: Callable[[], None]) -> None:
        with self._guard:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=self._loop, args=(run,), name="consumer-sweep", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self, run: Callable[[], None]) -> None:
        while not self._stopped.wait(self.interval):
            try:
                run()
            except Exception:  # the next pass tries again
                log.exception("the pass over ModelConsumers failed")
