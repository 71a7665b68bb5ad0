"""The inference engine: model, batcher and readiness, for one served model.

The service calls :meth:`InferenceEngine.infer` with a parsed request and gets
back the OIP response body; everything between the wire and onnxruntime is here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from modelplane_api import facts
from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.access import AccessControl
from modelplane_runtime.batching import Batcher, Usage
from modelplane_runtime.errors import ModelNotFound, NotReady
from modelplane_runtime.memory import (
    COST_PER_BODY_BYTE,
    HEADROOM,
    MemoryBudget,
    memory_limit,
    resident_bytes,
)
from modelplane_runtime.metrics import RuntimeMetrics
from modelplane_runtime.model import ModelLoadError, OnnxModel
from modelplane_runtime.protocol import InferenceRequest

log = logging.getLogger("modelplane.runtime")
T = TypeVar("T")


# Large requests are parsed and decoded here, one at a time: off the event loop, and with
# one thread (not one per request) contending with it for the GIL, so probes stay fast.
DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder")


async def off_the_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on the decoder thread (for a large request; a small one calls
    ``function`` right away, saving itself a coroutine)."""
    return await asyncio.get_running_loop().run_in_executor(DECODER, function, *args)


def check_version(version: str | None) -> None:
    """A request may name the model's version (REST in its path, gRPC in its message): only
    the one served, or none."""
    if version and version != facts.MODEL_VERSION:
        raise ModelNotFound(
            f"version '{version}' is not served; the only version is '{facts.MODEL_VERSION}'"
        )


# A body still being read this long after it began is slow or stalled, not "about to arrive".
ARRIVING_SECONDS = 0.1
# Less request memory budget than one small (64 KiB) request needs: the model cannot serve.
SMALLEST_BUDGET = 64 * 1024 * COST_PER_BODY_BYTE


class InferenceEngine:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.metrics = RuntimeMetrics(settings.model_name)
        self.model: OnnxModel | None = None
        self.not_ready_reason: str | None = "the model is loading"
        self._draining = False
        # When each request whose body is still being read started reading.
        self._reading: dict[object, float] = {}
        self._batcher: Batcher | None = None
        self.memory = MemoryBudget(None, self.metrics.memory_refused.inc)
        self.access: AccessControl | None = None
        self._access_watch: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Load and warm up the model once; ModelLoadError says why it cannot serve (the
        server then exits, and in a pod the reason reaches the ModelDeployment's status)."""
        if self.model is not None:
            return
        started = time.perf_counter()
        model = OnnxModel.load(self.settings)
        loaded = time.perf_counter()
        limit = memory_limit(self.settings.memory_limit_bytes)
        model.warm_up(
            self.settings.warmup_iterations,
            self.settings.max_batch_size,
            self.settings.warmup_shapes,
            memory_limit=limit,
        )
        # Ready with no memory left for requests would answer every one 413: say so instead.
        used = resident_bytes()
        if limit is not None and (limit - used) * HEADROOM < SMALLEST_BUDGET:
            raise ModelLoadError(
                f"the model leaves no memory for requests: the server uses {used >> 20} MiB "
                f"after loading and warm-up, of a memory limit of {limit >> 20} MiB; raise "
                "resources.limits.memory"
            )
        self.model = model
        self.metrics.loaded(model.provider)
        self.not_ready_reason = None
        done = time.perf_counter()
        log.info(
            "model %s ready in %.2fs (load %.2fs, warm-up %.2fs)",
            model.name,
            done - started,
            loaded - started,
            done - loaded,
        )

    def restrict(self, access: AccessControl) -> None:
        """Serve only the consumers ``access`` admits (its table loaded already)."""
        self.access = access

    def start(self) -> None:
        if self.access is not None:
            self._access_watch = asyncio.get_running_loop().create_task(
                self.access.watch(), name="access-file-watch"
            )
        limit = memory_limit(self.settings.memory_limit_bytes)
        self.memory = MemoryBudget.for_limit(limit, self.metrics.memory_refused.inc)
        if self.memory.total is not None:
            self.metrics.memory_budget(self.memory.total)
        if self.model is not None:
            self._batcher = Batcher(
                self.model,
                max_batch_size=self.settings.max_batch_size,
                max_latency_ms=self.settings.max_latency_ms,
                metrics=self.metrics,
                max_queued=self.settings.queue_limit,
                more_coming=self._bodies_arriving,
            )
            self._batcher.start()

    async def stop(self) -> None:
        self.drain()
        if self._access_watch is not None:
            self._access_watch.cancel()
        if self._batcher is not None:
            await self._batcher.stop()

    @property
    def abandoned_run(self) -> bool:
        """Shutdown gave up on a run that would not stop: the process must exit without it."""
        return self._batcher is not None and self._batcher.abandoned

    def drain(self) -> None:
        """Shutting down: readiness turns false; requests already accepted are answered."""
        self._draining = True

    def reading_body(self) -> _ReadingBody:
        """While a request body is being read: the batcher may wait for it (see below)."""
        return _ReadingBody(self._reading)

    def _bodies_arriving(self) -> bool:
        """Is a request about to join the batch? Only one whose body started arriving in the
        last ARRIVING_SECONDS: a body that stalls must not hold up every batch behind it."""
        if not self._reading:
            return False
        since = time.perf_counter() - ARRIVING_SECONDS
        return any(started > since for started in self._reading.values())

    @property
    def ready(self) -> bool:
        return self.readiness_problem() is None

    def readiness_problem(self) -> str | None:
        """Why a probe should take this pod out of the Service; None when ready."""
        if self._draining:
            return "the server is shutting down"
        return self._serving_problem()

    def _serving_problem(self) -> str | None:
        """Why a request cannot be served. Draining is not a reason: accepted means answered."""
        if self._batcher is None:
            return self.not_ready_reason or "the model is loading"
        late = self._batcher.stuck_seconds()
        if late is not None:
            return (
                f"the compute lane is stuck: a run has outlived its deadline by {late:.0f}s "
                "(onnxruntime was asked to terminate it)"
            )
        return None

    def model_for(self, name: str) -> OnnxModel:
        """The served model by name: 404 for another name, 503 while not ready."""
        if name != self.settings.model_name:
            raise ModelNotFound(
                f"model '{name}' is not served here; this server serves "
                f"'{self.settings.model_name}'"
            )
        problem = self._serving_problem()
        if self.model is None or problem is not None:
            raise NotReady(f"model '{name}' is not ready: {problem}")
        return self.model

    async def infer(
        self,
        name: str,
        request: InferenceRequest,
        *,
        large: bool = False,
        usage: Usage | None = None,
        deadline: float | None = None,
    ) -> tuple[OnnxModel, dict[str, np.ndarray[Any, Any]]]:
        """The model and its requested outputs (all of them when none are named).

        A ``large`` request's tensors are decoded on a worker thread, so that the event
        loop keeps answering (health probes above all) meanwhile. Its rows are counted on
        the model's batch axis and checked against a row limit from the declared shapes,
        before any data is decoded. After ``deadline`` (the event loop's clock) its run may
        be terminated."""
        model = self.model_for(name)
        batcher = self._batcher
        if batcher is None:  # model_for checked readiness; this guards a logic error
            raise NotReady(f"model '{name}' is not ready")
        selected = model.check_outputs([o.name for o in request.outputs or []])
        decode, inputs = model.decode_inputs, request.inputs
        if usage is not None:
            usage.rows = model.declared_rows(inputs)
            if usage.admit_rows is not None:  # before decoding and queueing, not after
                usage.admit_rows(usage.rows)
        if large:  # its lines bracket the decode: the loop answers probes in between
            log.debug("%s: decoding a large request on the decoder thread", name)
            began = time.perf_counter()
            arrays = await off_the_loop(decode, inputs)
            log.debug("%s: decoded in %.3fs", name, time.perf_counter() - began)
        else:
            arrays = decode(inputs)
        # the caller bounds the request's time
        outputs = await batcher.infer(arrays, usage, deadline)
        by_name = dict(zip(model.output_names, outputs, strict=True))
        return model, {n: by_name[n] for n in selected or model.output_names}


class _ReadingBody:
    """Context of one body being read (a class: a generator-based one costs 2 us more)."""

    __slots__ = ("_reading",)

    def __init__(self, reading: dict[object, float]) -> None:
        self._reading = reading

    def __enter__(self) -> None:
        self._reading[self] = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        del self._reading[self]
