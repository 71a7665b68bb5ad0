"""Adaptive batching: concurrent requests merged along axis 0, split back per request.

One compute lane (a single thread running onnxruntime, which releases the GIL).
When the lane is free, every queued request compatible with the oldest one is
merged, up to ``max_batch_size`` rows, and run at once; under load requests
accumulate while the lane computes, so batches grow with the load and a lone
request never waits for company. The deliberate waits, each at most
``max_latency_ms`` after the batch's oldest request arrived:

- while other requests are already being decoded, for them;
- while the batch holds fewer requests than were recently in the engine at once
  (queued or running), for the rest of them, at most one typical run. Without it,
  N clients that each wait for their answer settle into batches of N/2: one half
  computes while the other half's next requests are decoded. Where decoding and
  compute share a core, that overlap gains nothing and the halved batches cost
  rows per second (on the compute-bound bench model, batch 16 runs at 70% of the
  rows per second of batch 32). A lone client never waits: it is all there was.

The queue is bounded (``max_queued``): beyond it a request is refused at once
with 503 and a Retry-After estimated from the work ahead of it, instead of
waiting for a deadline it cannot meet while holding its body in memory.

A run on the compute thread is terminated (onnxruntime's ``RunOptions.terminate``)
once every request in its batch has passed its deadline: nobody waits for its
answer, and every request behind it would time out too. A run that outlives its
deadline all the same (a single long operator, which onnxruntime does not
interrupt) makes the lane *stuck*: readiness says so, and a drain gives up on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from modelplane_runtime.errors import NotReady, Overloaded, RequestTimeout
from modelplane_runtime.metrics import RuntimeMetrics
from modelplane_runtime.model import OnnxModel, run_options

log = logging.getLogger("modelplane.runtime")

# Runs typically shorter than this execute on the event loop itself (see _compute).
INLINE_RUN_SECONDS = 0.0005
Arrays = dict[str, np.ndarray[Any, Any]]
Outputs = list[np.ndarray[Any, Any]]


# A terminated run stops at onnxruntime's next check of the flag, a moment after its
# deadline (longer on a busy machine): only a run this far past it makes the lane stuck.
# Less, and every deadline a run overshoots would fail readiness and refuse requests.
STUCK_AFTER_SECONDS = 2.0
PEAK_WINDOW = 0.5  # seconds: how long a peak of concurrent requests is remembered


@dataclass(slots=True)
class Usage:
    """What one request costs: its rows, and their share of its batch's run time."""

    admit_rows: Callable[[int], None] | None = None  # raises when over a row limit
    rows: int = 0
    compute_seconds: float = 0.0
    ran: bool = False  # its rows went through onnxruntime: billed only then


@dataclass(eq=False)
class _Pending:
    arrays: Arrays
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Outputs]
    usage: Usage | None = None
    deadline: float | None = None  # the event loop's clock: nobody waits for it after this
    enqueued: float = field(default_factory=time.perf_counter)


class RunTerminated(RequestTimeout):
    """onnxruntime stopped a run at its deadline: never retried, request by request."""


class _Running:
    """The run on the compute thread now: its options (to terminate it) and deadline."""

    __slots__ = ("deadline", "options", "terminated")

    def __init__(self, options: ort.RunOptions, deadline: float | None) -> None:
        self.options = options
        self.deadline = deadline
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True
        self.options.terminate = True


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        *,
        max_batch_size: int,
        max_latency_ms: int,
        metrics: RuntimeMetrics,
        max_queued: int,
        more_coming: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size if model.batchable else 1
        self.max_queued = max_queued
        self.max_latency = max_latency_ms / 1000
        self.metrics = metrics
        self.more_coming = more_coming  # are requests already being read off the wire?
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._running: _Running | None = None
        self._batch: list[_Pending] = []  # the batch being run
        self.abandoned = False  # a drain gave up on a run that would not stop
        # Until measured, assume runs are long: the first ones go to the compute thread.
        self._typical_run_seconds = 1.0
        # The most requests in the engine at once (queued or running), over the last one
        # to two PEAK_WINDOWs: this window's and the previous one's.
        self._peak = [0, 0]
        self._peak_window_ends = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="batcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Finish everything queued, then stop the compute lane.

        Called once the server answers no request any more (uvicorn's graceful shutdown has
        ended): whatever still runs has no one waiting, so it is terminated, and a run that
        does not stop within ``grace`` seconds is abandoned (``abandoned``), never awaited.
        """
        self._stopping = True
        self._wakeup.set()
        if self._running is not None and all(p.future.done() for p in self._batch):
            self._running.terminate()
        if self._task is not None:
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.error(
                    "a model run did not stop within %gs of shutdown (onnxruntime was asked "
                    "to terminate it); exiting without it",
                    grace,
                )
                self.abandoned = True
                self._executor.shutdown(wait=False, cancel_futures=True)
                return
        self._executor.shutdown(wait=True)

    def stuck_seconds(self) -> float | None:
        """How long the run on the compute thread has outlived its deadline, once that is
        more than STUCK_AFTER_SECONDS; None otherwise."""
        running = self._running
        if running is None or running.deadline is None:
            return None
        late = asyncio.get_running_loop().time() - running.deadline
        return late if late > STUCK_AFTER_SECONDS else None

    async def infer(
        self, arrays: Arrays, usage: Usage | None = None, deadline: float | None = None
    ) -> Outputs:
        if self._stopping:
            raise NotReady("the server is shutting down")
        if len(self._queue) >= self.max_queued:
            self.metrics.queue_full.inc()
            batches_ahead = math.ceil(len(self._queue) / self.max_batch_size)
            retry_after = max(1, math.ceil(batches_ahead * self._typical_run_seconds))
            raise Overloaded(
                f"the queue is full ({self.max_queued} requests waiting; "
                "runtime.batching.maxQueuedRequests); retry later",
                retry_after,
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            arrays,
            self.model.rows(arrays),
            self._key(arrays),
            loop.create_future(),
            usage,
            deadline,
        )
        self._queue.append(pending)
        self._note_in_engine(pending.enqueued)
        self._wakeup.set()
        return await pending.future

    def _note_in_engine(self, now: float) -> None:
        if now > self._peak_window_ends:
            self._peak = [0, self._peak[0] if now - self._peak_window_ends < PEAK_WINDOW else 0]
            self._peak_window_ends = now + PEAK_WINDOW
        self._peak[0] = max(self._peak[0], len(self._queue) + len(self._batch))

    def _expected_requests(self) -> int:
        """How many requests a batch may wait for: the recent peak in the engine at once."""
        if time.perf_counter() > self._peak_window_ends + PEAK_WINDOW:
            return 0  # nothing arrived for two windows: the peak is stale
        return max(self._peak)

    def _key(self, arrays: Arrays) -> tuple[Any, ...]:
        """Requests with equal keys can be concatenated along axis 0."""
        return tuple((name, a.dtype.str, a.shape[1:]) for name, a in arrays.items())

    # --- the dispatcher -------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take([])
            if not batch:
                continue
            self._batch = batch  # counted as in the engine while it waits for company
            await self._wait_for_arrivals(batch)
            await self._run(batch)
            self._batch = []
            del batch  # else the last batch's tensors live on while the lane idles

    def _take(self, batch: list[_Pending]) -> list[_Pending]:
        """Move compatible live requests from the queue into ``batch``, oldest first."""
        room = self.max_batch_size - sum(p.rows for p in batch)
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # cancelled by its caller's timeout
                continue
            if not batch or (pending.key == batch[0].key and pending.rows <= room):
                batch.append(pending)
                room -= pending.rows
            else:
                kept.append(pending)
            if room <= 0:
                break
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _wait_for_arrivals(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        deadline = batch[0].enqueued + self.max_latency
        expected = self._expected_requests()
        # Waiting for the peak longer than a run gains nothing: the next batch starts then.
        expected_by = min(deadline, now + self._typical_run_seconds)
        while sum(p.rows for p in batch) < self.max_batch_size and (
            self.more_coming() or (len(batch) < expected and time.perf_counter() < expected_by)
        ):
            remaining = (deadline if self.more_coming() else expected_by) - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                # Not asyncio.wait_for: that wraps each wait in a new task.
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return
            self._take(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        for pending in batch:
            self.metrics.queue_seconds.observe(started - pending.enqueued)
        total = sum(p.rows for p in batch)
        if len(batch) == 1:
            merged = batch[0].arrays
        else:
            merged = {
                name: np.concatenate([p.arrays[name] for p in batch]) for name in batch[0].arrays
            }
        deadlines = [p.deadline for p in batch]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        try:
            outputs = await self._compute(self.model.run, merged, deadline)
        except Exception as exc:  # noqa: BLE001 - delivered to every caller of the batch
            if len(batch) > 1 and not isinstance(exc, RunTerminated):
                await self._run_one_by_one(batch)  # one bad request must not fail the others
                return
            _deliver(batch[0], error=exc)
            return
        finally:
            seconds = time.perf_counter() - started
            self.metrics.compute_seconds.observe(seconds)
            self.metrics.batch_size.observe(total)
            for pending in batch:
                if pending.usage is not None:
                    pending.usage.compute_seconds += seconds * pending.rows / max(total, 1)
                    pending.usage.ran = True
        if len(batch) == 1:
            _deliver(batch[0], result=outputs)
        elif all(o.ndim and o.shape[0] == total for o in outputs):
            start = 0
            for pending in batch:
                end = start + pending.rows
                _deliver(pending, result=[o[start:end] for o in outputs])
                start = end
        else:  # outputs not aligned with the batch axis: cannot be split
            await self._run_one_by_one(batch)

    async def _run_one_by_one(self, batch: list[_Pending]) -> None:
        for pending in batch:
            if pending.future.done():  # its caller stopped waiting meanwhile
                continue
            try:
                outputs = await self._compute(self.model.run, pending.arrays, pending.deadline)
                _deliver(pending, result=outputs)
            except Exception as exc:  # noqa: BLE001
                _deliver(pending, error=exc)

    async def _compute(
        self,
        function: Callable[[Arrays, ort.RunOptions | None], Outputs],
        arrays: Arrays,
        deadline: float | None = None,
    ) -> Outputs:
        """Short runs inline on the event loop; long ones on the compute thread.

        Handing a run to the thread and back costs tens of microseconds and two
        wake-ups; for a model that computes in less, that hand-off is most of the
        request. A long run would stall the loop (no new requests accepted, parsed or
        batched meanwhile), so it goes to the thread, where onnxruntime drops the GIL;
        so does a run of more rows than a batch holds (one large request).
        """
        short = self._typical_run_seconds < INLINE_RUN_SECONDS
        if short and self.model.rows(arrays) <= self.max_batch_size:
            started = time.perf_counter()
            outputs = function(arrays, None)
            self._typical_run_seconds = _eased(
                self._typical_run_seconds, time.perf_counter() - started
            )
            return outputs
        loop = asyncio.get_running_loop()
        running = self._running = _Running(run_options(self.model.is_large(arrays)), deadline)
        timer = None if deadline is None else loop.call_at(deadline, running.terminate)
        try:
            outputs, seconds = await loop.run_in_executor(
                self._executor, _timed, function, arrays, running.options
            )
        except Exception:
            if running.terminated:
                self.metrics.runs_terminated.inc()
                raise RunTerminated(
                    "the run was terminated at the request's deadline "
                    "(runtime.requestTimeoutSeconds)"
                ) from None
            raise
        finally:
            self._running = None
            if timer is not None:
                timer.cancel()
        self._typical_run_seconds = _eased(self._typical_run_seconds, seconds)
        return outputs


def _timed(
    function: Callable[[Arrays, ort.RunOptions | None], Outputs],
    arrays: Arrays,
    options: ort.RunOptions | None,
) -> tuple[Outputs, float]:
    """The run and its own duration, timed on the compute thread: timed from the event loop,
    the hand-off to the thread and back (which a busy loop delays) would count as run time,
    and a model that runs in microseconds would be judged long and kept off the loop."""
    started = time.perf_counter()
    outputs = function(arrays, options)
    return outputs, time.perf_counter() - started


def _eased(estimate: float, seconds: float) -> float:
    return estimate + 0.2 * (seconds - estimate)


def _deliver(
    pending: _Pending, *, result: Outputs | None = None, error: BaseException | None = None
) -> None:
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result if result is not None else [])
