"""kopf's ToggleSet, as patched: waiters still wake when the set's state changes, and
only then (kopf 1.45 woke them on every toggle added or dropped: N^2 at start-up)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from modelplane_operator import kopf_toggles


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
