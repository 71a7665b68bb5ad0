"""kopf's start-up readiness: linear in the number of objects, and not held in memory.

While kopf lists the watched kinds at start, every object gets a toggle in one
ToggleSet ("all indexed"), and every object's worker waits on the set until all are
indexed. kopf 1.45 wakes every waiter on every toggle added or dropped, whether or
not the set's state changed: N objects, N waiters, N^2 wake-ups. Measured on a real
API server with 10,000 ModelDeployments (about 40,000 objects of the watched kinds):
after a restart the operator spent 80% of its CPU in ``Condition.notify`` and had
not resumed them after 12 minutes.

Adding or dropping a toggle can only matter to a waiter when it changes the set's
state (``is_on()``), which is what each waiter waits for; so the set notifies only
then. Individual toggles turned on or off still notify as before.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from inspect import signature
from typing import Any

import kopf
from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import processing

_PATCHED = "_modelplane_patched"  # on the ToggleSet class and on the wrapped processor


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def notify_only_on_change() -> bool:
    """Patch kopf's ToggleSet; False (and nothing patched) where its shape is not the one
    this was written against, so a kopf upgrade falls back to kopf's own behaviour."""
    cls = aiotoggles.ToggleSet
    if getattr(cls, _PATCHED, False):
        return True
    probe = cls(all)
    if not all(hasattr(probe, a) for a in ("_condition", "_toggles", "is_on")):
        return False
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)
    return True


# --- handlers before the indexes are complete ---------------------------------------------------


class _IndexedWithoutWaiting:
    """kopf's "all indexed" set as one object's worker sees it: the object's own toggle is
    dropped as before (the set still turns on when every listed object is indexed), but
    the worker does not wait for the others before running its handlers."""

    def __init__(self, indexed: aiotoggles.ToggleSet) -> None:
        self._indexed = indexed

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self._indexed.drop_toggle(toggle)

    async def wait_for(self, state: bool) -> None:
        return None


def handlers_before_indexed(kinds: Collection[tuple[str, str]]) -> bool:
    """Run the handlers of ``kinds`` ((group, plural) pairs) as their objects are indexed,
    not once every listed object of every kind is.

    kopf makes each object's worker wait, after indexing it, until all are indexed: at
    start-up with 10,000 ModelDeployments, some 50,000 workers each holding its parsed
    object, about 1.7 GiB. These kinds' handlers only queue a key (or decide that nothing
    is needed), so they need not wait; the work queue waits instead (``all_indexed``).
    The set is remembered in the operator's memo for that. False (and nothing patched)
    where kopf's processor is not the shape this was written against."""
    original = processing.process_resource_event
    if getattr(original, _PATCHED, False):
        return True
    if not {"resource", "operator_indexed", "memobase"} <= signature(original).parameters.keys():
        return False
    wanted = frozenset(kinds)

    @functools.wraps(original)
    async def process_resource_event(**kwargs: Any) -> Any:
        indexed, resource = kwargs.get("operator_indexed"), kwargs["resource"]
        if indexed is not None and (resource.group, resource.plural) in wanted:
            kwargs["memobase"].indexed = indexed
            kwargs["operator_indexed"] = _IndexedWithoutWaiting(indexed)
        return await original(**kwargs)

    setattr(process_resource_event, _PATCHED, True)
    processing.process_resource_event = process_resource_event  # type: ignore[assignment]
    return True


async def all_indexed(memo: kopf.Memo) -> None:
    """Until kopf has indexed every object listed at start-up; at once if it already has,
    or if no worker has run early (kopf's own wait then held the handlers)."""
    indexed: aiotoggles.ToggleSet | None = getattr(memo, "indexed", None)
    if indexed is not None:
        await indexed.wait_for(True)
