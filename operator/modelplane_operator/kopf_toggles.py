"""kopf's start-up readiness, made linear in the number of objects.

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

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

_PATCHED = "_modelplane_notifies_on_change"


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
