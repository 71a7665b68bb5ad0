"""The reconcile queue: a key asked for many times while it waits runs once (with the newest
arguments), one asked for while it runs runs again after, work runs on the executor's
threads and never on the event loop, a failure does not stop the workers, and nothing runs
before the gate (kopf's start-up indexing) opens."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from modelplane_operator.work_queue import WorkQueue

BOUND = 10.0  # seconds any scenario may take


def test_a_key_asked_for_while_it_waits_runs_once_with_the_newest_work() -> None:
    ran: list[str] = []
    gate = threading.Event()

    def blocker() -> None:
        gate.wait(BOUND)
        ran.append("blocker")

    def model(n: int) -> None:
        ran.append(f"model {n}")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            queue = WorkQueue(pool, workers=1)
            queue.add("blocker", blocker)
            await asyncio.sleep(0.05)  # the one worker is now held by "blocker"
            for n in range(50):
                queue.add("model", functools.partial(model, n))
            assert queue.waiting() == 1
            gate.set()
            await _until(lambda: queue.waiting() == 0 and len(ran) == 2)
            await asyncio.sleep(0.1)  # room for a wrong second run to show
            queue.stop()

    asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert ran == ["blocker", "model 49"]


def test_a_key_asked_for_while_it_runs_runs_again_after() -> None:
    ran: list[int] = []
    running, release = threading.Event(), threading.Event()

    def first() -> None:
        running.set()
        release.wait(BOUND)
        ran.append(1)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            queue = WorkQueue(pool, workers=2)
            queue.add("model", first)
            await asyncio.to_thread(running.wait, BOUND)
            queue.add("model", lambda: ran.append(2))  # a change the first run may miss
            release.set()
            await _until(lambda: len(ran) == 2)
            queue.stop()

    asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert sorted(ran) == [1, 2]


def test_work_runs_on_the_executor_in_the_order_asked_and_survives_a_failure() -> None:
    threads: list[str] = []
    order: list[str] = []

    def work(key: str) -> None:
        threads.append(threading.current_thread().name)
        order.append(key)
        if key == "broken":
            raise RuntimeError("a bug in a reconcile")

    async def scenario() -> str:
        loop_thread = threading.current_thread().name
        with ThreadPoolExecutor(1, thread_name_prefix="reconciler") as pool:
            queue = WorkQueue(pool, workers=1)
            for key in ("a", "broken", "b", "c"):
                queue.add(key, functools.partial(work, key))
            await _until(lambda: len(order) == 4)
            queue.stop()
        return loop_thread

    loop_thread = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert order == ["a", "broken", "b", "c"]
    assert all(name.startswith("reconciler") for name in threads)
    assert loop_thread not in threads


def test_nothing_runs_until_the_gate_opens() -> None:
    ran: list[str] = []

    async def scenario() -> list[str]:
        indexed = asyncio.Event()  # stands for "kopf has indexed every listed object"
        with ThreadPoolExecutor(2) as pool:
            queue = WorkQueue(pool, workers=2, gate=indexed.wait)
            for key in ("a", "b"):
                queue.add(key, functools.partial(ran.append, key))
            await asyncio.sleep(0.2)  # room for a run that should not happen
            before = list(ran)
            indexed.set()
            await _until(lambda: len(ran) == 2)
            queue.stop()
        return before

    before = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert before == []
    assert sorted(ran) == ["a", "b"]


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)
