"""kopf's start-up readiness, as patched.

The ToggleSet: waiters still wake when the set's state changes, and only then (kopf 1.45
woke them on every toggle added or dropped: N^2 at start-up).

The processor: the workers of the kinds whose handlers only queue run them as soon as
their object is indexed (kopf made every worker wait, holding its object, until all
listed objects were: 1.7 GiB at 10,000 ModelDeployments); the other kinds' workers, and
the work queue's gate, still wait for all."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import version
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet
from kopf._core.reactor import processing

from modelplane_operator import kopf_setup, kopf_toggles

BOUND = 10.0


def test_the_patch_applies_to_this_kopf() -> None:
    assert kopf_toggles.notify_only_on_change()


def test_waiters_wake_when_the_last_toggle_is_dropped_and_not_before() -> None:
    kopf_toggles.notify_only_on_change()

    async def scenario() -> tuple[int, bool]:
        indexed = ToggleSet(all)
        toggles = [await indexed.make_toggle(name=f"object {i}") for i in range(200)]
        checks = 0

        def is_on() -> bool:
            nonlocal checks
            checks += 1
            return indexed.is_on()

        async def waiter() -> None:
            async with indexed._condition:
                await indexed._condition.wait_for(is_on)

        waiting = [asyncio.create_task(waiter()) for _ in range(50)]
        await asyncio.sleep(0)
        for toggle in toggles[:-1]:
            await indexed.drop_toggle(toggle)
        await asyncio.sleep(0)
        woken_early = any(task.done() for task in waiting)
        await indexed.drop_toggle(toggles[-1])
        await asyncio.wait_for(asyncio.gather(*waiting), 10)
        return checks, woken_early

    checks, woken_early = asyncio.run(scenario())
    assert not woken_early
    # 50 waiters checked once on arrival and once when the set turned on; unpatched, each
    # of the 200 drops would wake all 50 (10,000 checks).
    assert checks == 100


def test_a_new_off_toggle_turns_an_on_set_off_and_wakes_who_waits_for_that() -> None:
    kopf_toggles.notify_only_on_change()

    async def scenario() -> bool:
        indexed = ToggleSet(all)  # no toggles: on
        off = asyncio.create_task(indexed.wait_for(False))
        await asyncio.sleep(0)
        await indexed.make_toggle(False)
        await asyncio.wait_for(off, 10)
        return indexed.is_on()

    assert asyncio.run(scenario()) is False


def test_the_processor_patch_applies_to_this_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "process_resource_event", processing.process_resource_event)
    assert kopf_toggles.handlers_before_indexed([("modelplane.io", "modeldeployments")])
    assert kopf_toggles.handlers_before_indexed([("modelplane.io", "modeldeployments")])


class _Resource:
    def __init__(self, plural: str) -> None:
        self.group, self.plural = "modelplane.io", plural


def test_queueing_kinds_run_before_all_are_indexed_others_and_the_queue_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[str] = []

    # What kopf's processor does with the set (processing.py): drop the object's own
    # toggle once it is indexed, wait until all are, then run the handlers.
    async def kopf_processor(
        *,
        resource: Any,
        memobase: kopf.Memo,
        resource_indexed: Toggle,
        operator_indexed: ToggleSet,
        name: str,
    ) -> None:
        await operator_indexed.drop_toggle(resource_indexed)
        await operator_indexed.wait_for(True)
        handled.append(name)

    monkeypatch.setattr(processing, "process_resource_event", kopf_processor)
    assert kopf_toggles.handlers_before_indexed([("modelplane.io", "modeldeployments")])
    process: Any = processing.process_resource_event  # the patched one, around the stand-in

    async def scenario() -> tuple[list[str], bool]:
        memo = kopf.Memo()
        indexed = ToggleSet(all)
        model, consumer, last = [await indexed.make_toggle(name=n) for n in "abc"]

        def worker(plural: str, toggle: Toggle, name: str) -> Any:
            return process(
                resource=_Resource(plural),
                memobase=memo,
                resource_indexed=toggle,
                operator_indexed=indexed,
                name=name,
            )

        await asyncio.wait_for(worker("modeldeployments", model, "model"), BOUND)
        waiting_consumer = asyncio.create_task(worker("modelconsumers", consumer, "consumer"))
        gate = asyncio.create_task(kopf_toggles.all_indexed(memo))
        await asyncio.sleep(0.1)  # room for a wait that should not end yet
        early = list(handled) + (["gate"] if gate.done() else [])
        await indexed.drop_toggle(last)  # the last listed object is indexed
        await asyncio.wait_for(asyncio.gather(waiting_consumer, gate), BOUND)
        return early, indexed.is_on()

    early, all_on = asyncio.run(scenario())
    assert early == ["model"]
    assert handled == ["model", "consumer"]
    assert all_on


def test_the_gate_is_open_when_no_worker_ran_early() -> None:
    asyncio.run(asyncio.wait_for(kopf_toggles.all_indexed(kopf.Memo()), BOUND))


def test_a_patch_that_could_not_apply_is_reported_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="modelplane.operator"):
        kopf_setup.report_unapplied({"applied": True, "the one kopf changed": False})
    (record,) = caplog.records
    assert "the one kopf changed" in record.getMessage()
    assert version("kopf") in record.getMessage()
