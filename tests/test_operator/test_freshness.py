"""The operator's own writes win over a watch cache that has not caught up, and only then."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.freshness import RecentWrites

KEY = ("Deployment", "models", "demo")


def _obj(version: str, uid: str = "u1", image: str = "new") -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version, "uid": uid}, "spec": {"image": image}}


APPLIED = _obj("20")

# (case, what the cache or event shows, tombstone of a DELETED event, expected result)
AFTER_APPLY: list[tuple[str, Any, Any, Any]] = [
    ("cache behind: ours", _obj("15", image="old"), None, APPLIED),
    ("cache at ours", _obj("20"), None, _obj("20")),
    (
        "cache past ours (a later edit)",
        _obj("25", image="edited"),
        None,
        _obj("25", image="edited"),
    ),
    ("creation not yet seen", None, None, APPLIED),
    ("deleted after ours", None, _obj("30"), None),
    (
        "versions not integers: trust the cache",
        _obj("abc", image="x"),
        None,
        _obj("abc", image="x"),
    ),
]


@pytest.mark.parametrize(
    ("seen", "tombstone", "expected"),
    [case[1:] for case in AFTER_APPLY],
    ids=[case[0] for case in AFTER_APPLY],
)
def test_an_apply_is_remembered_until_the_cache_has_it(
    seen: Any, tombstone: Any, expected: Any
) -> None:
    recent = RecentWrites()
    recent.applied(KEY, APPLIED)
    assert recent.fresher(KEY, seen, tombstone) == expected


def test_once_caught_up_the_cache_wins_from_then_on() -> None:
    recent = RecentWrites()
    recent.applied(KEY, APPLIED)
    assert recent.fresher(KEY, _obj("20")) == _obj("20")
    # An older object later on (a replayed event) is no longer corrected: the record is gone.
    assert recent.fresher(KEY, _obj("15", image="old")) == _obj("15", image="old")


def test_a_deleted_child_stays_deleted_until_the_cache_drops_it() -> None:
    recent = RecentWrites()
    recent.deleted(KEY, _obj("20", uid="gone"))
    assert recent.fresher(KEY, _obj("21", uid="gone")) is None  # still cached: not deleted twice
    assert recent.fresher(KEY, _obj("40", uid="new")) == _obj("40", uid="new")  # re-created
    assert recent.fresher(KEY, _obj("21", uid="gone")) == _obj("21", uid="gone")  # record gone


def test_records_expire() -> None:
    now = [0.0]
    recent = RecentWrites(ttl=60, clock=lambda: now[0])
    recent.applied(KEY, APPLIED)
    now[0] = 61.0
    assert recent.fresher(KEY, _obj("15", image="old")) == _obj("15", image="old")


def test_forget_drops_every_child_of_a_model_deployment() -> None:
    recent = RecentWrites()
    recent.applied(KEY, APPLIED)
    recent.applied(("Service", "models", "demo"), APPLIED)
    recent.applied(("Service", "models", "other"), APPLIED)
    recent.forget("models", "demo")
    assert recent.fresher(KEY, None) is None
    assert recent.fresher(("Service", "models", "demo"), None) is None
    assert recent.fresher(("Service", "models", "other"), None) == APPLIED


@pytest.mark.parametrize(
    ("seen", "echo"),
    [
        (_obj("20"), True),  # the watch bringing our own apply back
        (_obj("25", image="edited"), False),  # someone else's change after ours
        (_obj("15", image="old"), False),  # an older event still in flight
        (_obj("20", uid="u2"), False),  # a re-created object that happens to share the version
    ],
    ids=["ours", "later edit", "older", "other uid"],
)
def test_only_the_exact_echo_of_an_apply_is_ours(seen: Any, echo: bool) -> None:
    recent = RecentWrites()
    recent.applied(KEY, APPLIED)
    assert recent.echo(KEY, seen) is echo
    # An echo ends the record (the cache has the object); anything else leaves it.
    assert recent.fresher(KEY, _obj("15", image="old")) == (
        _obj("15", image="old") if echo else APPLIED
    )


def test_a_deletion_has_no_echo() -> None:
    recent = RecentWrites()
    recent.deleted(KEY, APPLIED)
    assert recent.echo(KEY, _obj("20")) is False


def test_expired_records_are_swept_by_the_next_write_without_a_lookup() -> None:
    now = [0.0]
    recent = RecentWrites(ttl=60, clock=lambda: now[0])
    recent.applied(KEY, APPLIED)  # written once, never looked up again
    now[0] = 61.0
    recent.applied(("Service", "models", "other"), APPLIED)
    assert KEY not in recent._records
    assert ("Service", "models", "other") in recent._records


def test_a_write_whose_echo_came_back_before_it_returned_is_not_remembered() -> None:
    """The watch delivered our apply before the apply call returned: the cache holds it, and
    no echo will come to end a record. Remembered, it would outlive a later deletion the
    cache shows (and be held until its TTL)."""
    recent = RecentWrites()
    recent.applied(KEY, APPLIED, cached=_obj("20"))
    assert recent.fresher(KEY, None) is None  # deleted since: the cache's word stands
    recent.applied(KEY, APPLIED, cached=_obj("15", image="old"))  # the cache is behind
    assert recent.fresher(KEY, None) == APPLIED
