"""ModelDeployments waiting for a reconcile: each one once, however often it is asked for.

kopf gives every object of a burst (10,000 created at once, or the listing at start-up)
a worker of its own, which holds the object's event, kopf's state for it and the handler's
arguments until the handler returns. A sync handler returns only once a thread has run it,
so a burst larger than the thread pool waits in memory, about 50 KiB per object. The
ModelDeployment handlers only add its key here and return at once; a few workers (as many
as kopf's executor has threads) run the reconciles, in the order asked for.

A key asked for again while it waits is not queued twice (the reconcile reads the cache
when it runs, so it sees every change that asked for it); one asked for while its
reconcile runs is queued again, for what that reconcile may have missed.

No reconcile runs before ``gate`` returns: at start-up, until kopf has indexed every
listed object (kopf_toggles.all_indexed), so that none reads a cache still filling up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor

log = logging.getLogger("modelplane.operator")


class WorkQueue:
    def __init__(
        self,
        executor: Executor,
        workers: int,
        gate: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._executor = executor
        self._workers = workers
        self._gate = gate
        self._waiting: dict[Hashable, Callable[[], None]] = {}
        self._ready: asyncio.Queue[Hashable] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Hashable, work: Callable[[], None]) -> None:
        """Run ``work`` for ``key`` on a thread, once, after the keys queued before it.
        Called on the event loop."""
        if self._ready is None:
            self._ready = asyncio.Queue()
            self._tasks = [
                asyncio.create_task(self._serve(self._ready), name=f"reconcile-worker-{n}")
                for n in range(self._workers)
            ]
        if key not in self._waiting:
            self._ready.put_nowait(key)
        self._waiting[key] = work  # the newest: it closes over the newest arguments

    def waiting(self) -> int:
        return len(self._waiting)

    async def _serve(self, ready: asyncio.Queue[Hashable]) -> None:
        loop = asyncio.get_running_loop()
        if self._gate is not None:
            await self._gate()
        while True:
            key = await ready.get()
            work = self._waiting.pop(key)
            try:
                await loop.run_in_executor(self._executor, work)
            except Exception:  # the work handles its own failures; this is a bug
                log.exception("queued reconcile of %s failed", key)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
