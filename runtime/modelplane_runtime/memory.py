"""The request memory budget: request bodies are admitted against the pod's memory limit.

A request costs memory in proportion to its body (the body itself, its decoded
tensors, the answer): measured by bench/runtime_limits.py at most
:data:`COST_PER_BODY_BYTE` times the body for the largest JSON and binary
requests. The budget is what the memory limit leaves after the loaded model,
less a margin; a body that does not fit beside those in flight is refused with
503 and ``Retry-After`` (it would fit later), one that could never fit with 413.
Without a known limit (no cgroup limit, no MODELPLANE_MEMORY_LIMIT_BYTES) there
is no budget, only ``maxRequestBytes``.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB),
so after one large request later large blocks come from the heap and stay with
the process when freed. :func:`use_mmap_for_large_blocks` fixes the threshold at
1 MiB: bodies, tensors and answers are mapped and unmapped whole, RSS returns
near its baseline at once, and nothing needs ``malloc_trim`` (which holds the
allocator's lock for tens of milliseconds, stalling the event loop: measured
as health probes over 100 ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

from modelplane_runtime.errors import Overloaded, PayloadTooLarge

log = logging.getLogger("modelplane.runtime")

COST_PER_BODY_BYTE = 3
HEADROOM = 0.8  # of what the limit leaves after start-up: for allocator slack and the rest
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_UNLIMITED = 1 << 60
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_limit(configured: int | None) -> int | None:
    """The pod's memory limit: configured, else the cgroup's; None when unlimited."""
    if configured is not None:
        return configured
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text != "max" and int(text) < _UNLIMITED:
                return int(text)
    return None


def resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class MemoryBudget:
    def __init__(self, total: int | None, on_refusal: Callable[[], None]) -> None:
        self.total = total
        self.in_use = 0
        self._on_refusal = on_refusal

    @classmethod
    def for_limit(cls, limit: int | None, on_refusal: Callable[[], None]) -> MemoryBudget:
        if limit is None:
            return cls(None, on_refusal)
        total = max(0, int((limit - resident_bytes()) * HEADROOM))
        log.info(
            "request memory budget %d MiB (memory limit %d MiB, after start-up)",
            total >> 20,
            limit >> 20,
        )
        return cls(total, on_refusal)

    def reservation(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """The memory one request holds; grown as its body arrives, released when it is done."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.body_bytes = 0
        self.held = 0

    def grow_to(self, body_bytes: int) -> None:
        budget = self.budget
        self.body_bytes = body_bytes
        if budget.total is None:
            return
        needed = body_bytes * COST_PER_BODY_BYTE - self.held
        if needed <= 0:
            return
        if body_bytes * COST_PER_BODY_BYTE > budget.total:
            raise PayloadTooLarge(
                f"a body of {body_bytes} bytes needs about {body_bytes * COST_PER_BODY_BYTE >> 20}"
                f" MiB to serve, more than this pod's request memory budget of "
                f"{budget.total >> 20} MiB; raise the memory limit or send smaller requests",
                {"Connection": "close"},
            )
        if budget.in_use + needed > budget.total:
            budget._on_refusal()
            refusal = Overloaded(
                f"not enough memory for this request beside those in flight "
                f"({budget.in_use >> 20} of {budget.total >> 20} MiB in use); retry later",
                retry_after=1,
            )
            refusal.headers["Connection"] = "close"  # its body is left unread
            raise refusal
        budget.in_use += needed
        self.held += needed

    def charge(self, extra: int, what: str) -> None:
        """Hold ``extra`` bytes more, for what the body's size does not show (``what``): 413
        if the request could never fit, 503 while others hold the budget."""
        budget = self.budget
        if budget.total is None or extra <= 0:
            return
        if self.held + extra > budget.total:
            raise PayloadTooLarge(
                f"this request ({what}) needs about {(self.held + extra) >> 20} MiB to serve, "
                "more than this "
                f"pod's request memory budget of {budget.total >> 20} MiB; raise the memory "
                "limit or send smaller requests"
            )
        if budget.in_use + extra > budget.total:
            budget._on_refusal()
            raise Overloaded(
                f"not enough memory for this request ({what}) beside the requests in flight "
                f"({budget.in_use >> 20} of {budget.total >> 20} MiB in use); retry later",
                retry_after=1,
            )
        budget.in_use += extra
        self.held += extra

    def release(self) -> None:
        budget = self.budget
        budget.in_use -= self.held
        self.held = 0
        self.body_bytes = 0


def use_mmap_for_large_blocks() -> bool:
    """Fix glibc's mmap threshold (see the module's doc); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return False
