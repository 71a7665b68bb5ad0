"""Run the BentoML service in this process under uvicorn, as BentoML's own worker does.

BentoML's ``bentoml serve`` adds a circus arbiter and a worker process; a pod
runs one model in one process, so the runtime starts the same ASGI app
(``Service.to_asgi``) directly: faster start-up, and SIGTERM handled here.

The Open Inference Protocol over gRPC (grpc_service.py) is served by the same process,
on the same event loop, from the moment the REST server has started (the model loaded
and the batcher running) until it stops.

Shutdown: on SIGTERM or SIGINT readiness turns false at once, uvicorn stops
accepting connections and gRPC new calls, every request and call in flight
finishes (up to the request timeout), the batcher drains, then the process exits.
A run that outlives every deadline and ignores onnxruntime's terminate flag is
not waited for: the process exits (status 1) without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from starlette.middleware import Middleware

from modelplane_api import facts
from modelplane_api.settings import RuntimeSettings

if TYPE_CHECKING:
    from modelplane_runtime.grpc_service import GrpcService
    from modelplane_runtime.inference import InferenceEngine
from modelplane_api.access import InvalidAccessTable
from modelplane_runtime.access import AccessControl
from modelplane_runtime.connections import Closing, ConnectionLimits, guarded_protocol
from modelplane_runtime.errors import AccessFileError, ServingError
from modelplane_runtime.logs import configure_logging, write_termination_message
from modelplane_runtime.memory import use_mmap_for_large_blocks
from modelplane_runtime.metrics import AccessMetrics, MetricsCache
from modelplane_runtime.middleware import lean
from modelplane_runtime.model import ModelLoadError

log = logging.getLogger("modelplane.runtime")


# How long idle keep-alive connections stay open once shutdown begins (within the pod's
# grace period's margin): a request already on its way gets an answer saying
# `connection: close`, where closing at once would meet it with a reset.
KEEP_ALIVE_DRAIN_SECONDS = 2.0


class _DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        engine: InferenceEngine,
        closing: Closing,
        grpc: GrpcService | None = None,
    ) -> None:
        super().__init__(config)
        self.engine = engine
        self.closing = closing
        self.grpc = grpc
        self.failure: ServingError | None = None  # why the server stopped at start

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up (the lifespan: the batcher starts; then REST listens), then
        gRPC's: both protocols meet the engine running."""
        await super().startup(sockets)
        if self.started and self.grpc is not None:
            try:
                await self.grpc.start()
            except ServingError as exc:
                self.failure = exc
                self.should_exit = True  # shut down what started, then fail (serve)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting (REST connections, gRPC calls); let keep-alive clients leave on an
        answer; let gRPC calls in flight finish; then uvicorn's own shutdown (REST requests
        in flight finish, idle connections close, then the batcher drains)."""
        self.closing.started = True
        for server in self.servers:
            server.close()
        grace = self.engine.settings.request_timeout_seconds  # uvicorn's, below
        grpc_drained = (
            asyncio.ensure_future(self.grpc.stop(grace)) if self.grpc is not None else None
        )
        deadline = time.monotonic() + KEEP_ALIVE_DRAIN_SECONDS
        while self.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if grpc_drained is not None:
            # Calls in flight end within their deadlines (the request timeout at most), as
            # REST's requests do meanwhile: this wait does not add to uvicorn's below.
            await grpc_drained
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "%s received: not ready, finishing requests in flight", signal.Signals(sig).name
            )
            self.engine.drain()
        super().handle_exit(sig, frame)


def _use_single_process_metrics() -> tuple[MetricsCache, str]:
    """BentoML's metrics client assumes circus's multiprocess mode; one process needs none.
    Returns /metrics as BentoML renders it, at most once a second, and its media type."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    client = PrometheusClient(multiproc=False)
    BentoMLContainer.metrics_client.set(client)
    return MetricsCache(client.generate_latest), client.CONTENT_TYPE_LATEST


def serve(settings: RuntimeSettings) -> None:
    """Serve until SIGTERM/SIGINT. Blocks."""
    configure_logging()
    # The event loop takes the GIL back from the decoder thread within 1 ms (not 5): health
    # probes and small requests stay fast while a large body is decoded.
    sys.setswitchinterval(0.001)
    use_mmap_for_large_blocks()  # large requests' memory goes back to the kernel at once
    metrics = _use_single_process_metrics()
    from modelplane_runtime.grpc_service import GrpcService
    from modelplane_runtime.inference import InferenceEngine
    from modelplane_runtime.service import (
        AccessGuard,
        InferFastPath,
        answer_errors_as_json,
        build_service,
    )

    engine = InferenceEngine(settings)
    access = _access_control(settings)
    try:
        engine.load()
    except ModelLoadError as exc:
        # The operator puts it into the ModelDeployment's status (reason ModelLoadFailed).
        write_termination_message(
            settings.termination_message_path, f"{facts.MODEL_LOAD_FAILED}: {exc.message}"
        )
        raise
    app = build_service(engine).to_asgi(is_main=True)
    answer_errors_as_json(app)
    # A response must start within the request timeout; a little margin for the batcher's.
    deadline = settings.request_timeout_seconds + 5
    fast_path = Middleware(InferFastPath, access=access, metrics=metrics)
    app.user_middleware[:] = lean(app.user_middleware, fast_path, deadline)
    if access is not None:
        engine.restrict(access)
        app.user_middleware.insert(1, Middleware(AccessGuard, access=access))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # a pod behind a Service: no proxy headers to trust
        timeout_graceful_shutdown=settings.request_timeout_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
        http=guarded_protocol(ConnectionLimits.of(settings), closing := Closing()),
    )
    grpc = GrpcService(engine, settings, access) if settings.grpc_port else None
    log.info(
        "serving %s on http://%s:%d%s",
        settings.model_name,
        settings.host,
        settings.port,
        f" and grpc://{grpc.address}" if grpc is not None else "",
    )
    # uvicorn re-raises the signal into the handler that was there before it once it
    # has drained; a no-op there makes a completed drain exit 0, not "killed by SIGTERM".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    server = _DrainingServer(config, engine, closing, grpc)
    server.run()
    if engine.abandoned_run:  # its thread would hold up the interpreter's exit for ever
        logging.shutdown()
        os._exit(1)
    if server.failure is not None:
        raise server.failure


def _access_control(settings: RuntimeSettings) -> AccessControl | None:
    """The access table, when the model is restricted; one that cannot be read stops the
    start (a pod's is mounted before it starts: missing or invalid is a bug to see)."""
    if settings.access_file is None:
        return None
    access = AccessControl(
        settings.access_file, settings.model_name, AccessMetrics(settings.model_name)
    )
    try:
        access.load()
    except OSError as exc:
        raise AccessFileError(f"access file {settings.access_file}: {exc.strerror}") from None
    except InvalidAccessTable as exc:
        raise AccessFileError(f"access file {settings.access_file} is invalid: {exc}") from None
    return access


def _drained(sig: int, frame: FrameType | None) -> None:
    log.info("drained after %s; exiting", signal.Signals(sig).name)
