"""One retry policy: doubling to a cap, jittered, never sooner than asked, never giving up,
and cancelled (the backoff started over) by a success."""

from __future__ import annotations

import threading

import pytest

from modelplane_operator.retrier import Retrier

# (attempt, at_least, rng draw, expected delay): base 1 s, cap 300 s, jitter +-20%
DELAYS = [
    (0, 0.0, 0.5, 1.0),
    (1, 0.0, 0.5, 2.0),
    (3, 0.0, 0.5, 8.0),
    (20, 0.0, 0.5, 300.0),  # capped
    (0, 0.0, 0.0, 0.8),  # jitter low end
    (0, 0.0, 1.0, 1.2),  # jitter high end
    (0, 30.0, 0.5, 30.0),  # never sooner than the reconcile asked (a child in the way)
    (20, 10.0, 0.5, 300.0),
]


@pytest.mark.parametrize(("attempt", "at_least", "draw", "expected"), DELAYS)
def test_delay(attempt: int, at_least: float, draw: float, expected: float) -> None:
    retrier = Retrier(rng=lambda: draw)
    assert retrier.delay(attempt, at_least) == pytest.approx(expected)


def test_retries_back_off_until_a_success_starts_over() -> None:
    retrier = Retrier(base=0.01, cap=0.05, rng=lambda: 0.5)
    ran = threading.Event()
    delays = [retrier.schedule("key", ran.set) for _ in range(8)]  # each replaces the last
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(0.05), "capped, and still scheduled: it never gives up"
    assert retrier.attempts("key") == 8
    assert ran.wait(5), "the pending retry runs"
    retrier.succeeded("key")
    assert retrier.attempts("key") == 0
    assert retrier.schedule("key", lambda: None) == pytest.approx(0.01), "backoff starts over"
    retrier.cancel_all()


def test_a_success_cancels_the_pending_retry() -> None:
    retrier = Retrier(base=0.2, rng=lambda: 0.5)
    ran = threading.Event()
    retrier.schedule("key", ran.set)
    retrier.succeeded("key")
    assert not ran.wait(0.5)
