"""The gRPC service: where each Open Inference Protocol RPC meets the model.

KServe's V2 gRPC protocol (``inference.GRPCInferenceService``), served by grpc's asyncio
server in the runtime's own process and event loop, beside REST (BentoML 1.4 serves no
gRPC). The same thin shell as service.py: every RPC maps protobuf onto
:class:`InferenceEngine` and back, through the same access control, limits, batcher,
metering and metrics as REST; errors become status codes once, in :func:`_abort`, by
``errors.GRPC_CODES``.

    ServerLive, ServerReady        process up; model loaded, warmed up, not draining
                                   (no key needed, as REST's probes)
    ServerMetadata                 server name and version
    ModelMetadata, ModelReady      signature; readiness (NOT_FOUND for another model)
    ModelInfer                     inference, raw_input_contents or typed contents

Bounds, from the same settings as REST's: a message of at most ``maxRequestBytes`` (larger
ones the transport refuses, RESOURCE_EXHAUSTED), held against the request memory budget
while it is served; an answer within ``requestTimeoutSeconds`` or the client's deadline,
whichever is sooner; at most ``MODELPLANE_MAX_CONNECTIONS`` RPCs at once (one HTTP/1.1
connection carries one request at a time); metadata of at most
``MODELPLANE_MAX_HEADER_BYTES``. A key travels as REST's does, in ``authorization`` metadata
(``Bearer <key>``).

Messages are parsed and serialized here, not by grpc: a request's size is known (and
reserved) before it is parsed, and a large one is parsed and answered off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from modelplane_api.settings import RuntimeSettings
from modelplane_runtime import __version__
from modelplane_runtime.access import AccessControl, ConsumerState
from modelplane_runtime.batching import Usage
from modelplane_runtime.errors import (
    CLIENT_CLOSED,
    GRPC_CODES,
    BadRequest,
    NotReady,
    RequestTimeout,
    ServingError,
)
from modelplane_runtime.grpc_protocol import (
    SERVICE,
    ModelInferRequest,
    ModelMetadataRequest,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    inference_request,
    inference_response,
    model_metadata,
    model_name_of,
)
from modelplane_runtime.inference import InferenceEngine, check_version, off_the_loop
from modelplane_runtime.json_tensors import SMALL_BODY
from modelplane_runtime.metrics import failure_outcome
from modelplane_runtime.protocol import InferenceRequest, string_cost

log = logging.getLogger("modelplane.runtime")
# Every RPC here takes its message's bytes and answers bytes (see above).
Context = grpc.aio.ServicerContext[bytes, bytes]

# Messages from this size are parsed, decoded and answered on the decoder thread (as REST's).
LARGE_MESSAGE = SMALL_BODY
_LIVE: bytes = ServerLiveResponse(live=True).SerializeToString()
_HEADERS_NOT_SENT = frozenset({"connection"})  # HTTP/1.1's own; the rest become trailers


class PortUnavailable(ServingError):
    """The gRPC port cannot be listened on: the server does not start."""


class GrpcService:
    """The RPCs of ``inference.GRPCInferenceService``, and the server that serves them."""

    def __init__(
        self,
        engine: InferenceEngine,
        settings: RuntimeSettings,
        access: AccessControl | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.access = access
        self.address = _address(settings.host, settings.grpc_port)
        self._server: grpc.aio.Server | None = None

    # --- the server ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, on the running event loop; PortUnavailable when the port is taken."""
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_metadata_size", settings.max_header_bytes),
                # grpc sets SO_REUSEPORT by default: a second server on the port would bind
                # too and take half the calls, where a taken port must fail the start.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=settings.max_connections,
        )
        methods: dict[str, Callable[[bytes, Context], Awaitable[bytes]]] = {
            "ServerLive": guarded(self.server_live),
            "ServerReady": guarded(self.server_ready),
            "ServerMetadata": guarded(self.server_metadata),
            "ModelReady": guarded(self.model_ready),
            "ModelMetadata": guarded(self.model_metadata),
            "ModelInfer": self.model_infer,  # counts its own failures, bugs included
        }
        # No (de)serializers: each RPC gets its message's bytes and answers bytes (see above).
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise PortUnavailable(
                f"cannot listen for gRPC on {self.address} ({exc}); free the port, or set "
                "another with --grpc-port (MODELPLANE_GRPC_PORT; 0 serves REST only)"
            ) from None
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs at once (clients are told to go elsewhere: HTTP/2 GOAWAY); let
        those in flight finish for up to ``grace`` seconds, then cancel what remains."""
        if self._server is not None:
            await self._server.stop(grace)

    # --- the RPCs -----------------------------------------------------------------------

    async def server_live(self, message: bytes, context: Context) -> bytes:
        return _LIVE

    async def server_ready(self, message: bytes, context: Context) -> bytes:
        answer: bytes = ServerReadyResponse(ready=self.engine.ready).SerializeToString()
        return answer

    async def server_metadata(self, message: bytes, context: Context) -> bytes:
        try:
            self._admit(context, None, inference=False)
        except ServingError as problem:
            await _abort(context, problem)
        answer: bytes = ServerMetadataResponse(
            name="modelplane", version=__version__, extensions=[]
        ).SerializeToString()
        return answer

    async def model_ready(self, message: bytes, context: Context) -> bytes:
        try:
            request = _parse(ModelReadyRequest, message)
            self._admit(context, request.name, inference=False)
            check_version(request.version)
            try:
                self.engine.model_for(request.name)
                ready = True
            except NotReady:
                ready = False
        except ServingError as problem:
            await _abort(context, problem)
        answer: bytes = ModelReadyResponse(ready=ready).SerializeToString()
        return answer

    async def model_metadata(self, message: bytes, context: Context) -> bytes:
        try:
            request = _parse(ModelMetadataRequest, message)
            self._admit(context, request.name, inference=False)
            check_version(request.version)
            return model_metadata(self.engine.model_for(request.name).metadata())
        except ServingError as problem:
            await _abort(context, problem)

    async def model_infer(self, message: bytes, context: Context) -> bytes:
        """The REST route's ``infer``, step for step: key, model, memory, decode, batch,
        answer; counted and metered the same way."""
        engine = self.engine
        # The key before the message is parsed; its model name read off the front.
        name = model_name_of(message)
        parsed: Any = None
        consumer: ConsumerState | None = None
        try:
            if name is None:
                parsed = _parse(ModelInferRequest, message)
                name = parsed.model_name
            consumer = self._admit(context, name, inference=True)
        except ServingError as problem:  # not an inference request answered: as REST
            await _abort(context, problem)
        usage = consumer.usage() if consumer is not None else None
        response = b""
        outcome = "success"
        started = time.perf_counter()
        engine.metrics.pending.inc()
        try:
            response = await self._answer(message, parsed, name, usage, context)
        except ServingError as problem:
            outcome = failure_outcome(problem.status)
            engine.metrics.failure(problem.status)
            await _abort(context, problem)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            outcome = failure_outcome(CLIENT_CLOSED)
            engine.metrics.failure(CLIENT_CLOSED)
            raise
        except Exception:  # a bug: logged here with its traceback, never sent
            outcome = failure_outcome(500)
            engine.metrics.failure(500)
            log.exception("unhandled error in %s/ModelInfer", SERVICE)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            engine.metrics.pending.dec()
            engine.metrics.request_seconds.observe(time.perf_counter() - started)
            if consumer is not None and usage is not None:
                consumer.meter.record(
                    outcome,
                    usage.rows,
                    usage.compute_seconds,
                    len(message),
                    len(response),
                    ran=usage.ran,
                )
        engine.metrics.success.inc()
        return response

    async def _answer(
        self,
        message: bytes,
        parsed: Any,
        name: str,
        usage: Usage | None,
        context: Context,
    ) -> bytes:
        """The answer to one admitted ModelInferRequest, within its deadline and holding its
        memory while it is served."""
        engine = self.engine
        reservation = engine.memory.reservation()
        answer_by = asyncio.get_running_loop().time() + self._seconds_left(context)
        try:
            async with asyncio.timeout_at(answer_by):
                engine.model_for(name)  # NOT_FOUND or UNAVAILABLE before anything is decoded
                reservation.grow_to(len(message))
                large = len(message) >= LARGE_MESSAGE
                request, raw = (
                    await off_the_loop(_decode, message, parsed, name)
                    if large
                    else _decode(message, parsed, name)
                )
                if request.has_strings:  # BYTES cost per element, not per byte
                    reservation.charge(string_cost(request), "BYTES elements")
                model, outputs = await engine.infer(
                    name, request, large=large, usage=usage, deadline=answer_by
                )
                answer = partial(inference_response, model.name, request.id, outputs, raw=raw)
                return await off_the_loop(answer) if large else answer()
        except TimeoutError:
            raise RequestTimeout(
                f"no answer within {self.settings.request_timeout_seconds}s "
                "(runtime.requestTimeoutSeconds) or the call's deadline"
            ) from None
        finally:
            reservation.release()

    # --- helpers ------------------------------------------------------------------------

    def _admit(
        self, context: Context, model: str | None, *, inference: bool
    ) -> ConsumerState | None:
        """The caller's consumer on a restricted model (None on an open one), or a refusal."""
        if self.access is None:
            return None
        return self.access.admit(_authorization(context), model, inference=inference)

    def _seconds_left(self, context: Context) -> float:
        """The request timeout, or less if the client's deadline is sooner."""
        timeout = float(self.settings.request_timeout_seconds)
        remaining = context.time_remaining()
        return timeout if remaining is None else max(0.0, min(timeout, remaining))


def guarded(
    method: Callable[[bytes, Context], Awaitable[bytes]],
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    """A bug in ``method`` is logged with its traceback and answered INTERNAL, as REST
    answers 500: no exception text leaves the process (grpc would send it as UNKNOWN)."""

    async def call(message: bytes, context: Context) -> bytes:
        try:
            return await method(message, context)
        except grpc.aio.AbortError:  # an answer already given (_abort)
            raise
        except Exception:
            log.exception("unhandled error in %s/%s", SERVICE, method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return call


def _decode(message: bytes, parsed: Any, name: str) -> tuple[InferenceRequest, bool]:
    """The core request of a ModelInferRequest, and whether its inputs came raw."""
    if parsed is None:
        parsed = _parse(ModelInferRequest, message)
    if parsed.model_name != name:  # field 1 given twice, and read off the front above
        raise BadRequest("model_name is given more than once, with different values")
    check_version(parsed.model_version)
    return inference_request(parsed), bool(parsed.raw_input_contents)


def _parse(kind: Any, message: bytes) -> Any:
    try:
        return kind.FromString(message)
    except DecodeError:
        raise BadRequest(
            f"the message is not a valid {kind.DESCRIPTOR.name} ({SERVICE} as KServe's "
            "grpc_predict_v2.proto declares it)"
        ) from None


def _authorization(context: Context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else bytes(value)
    return None


async def _abort(context: Context, problem: ServingError) -> NoReturn:
    """End the RPC with the status code of ``problem``'s HTTP status; its headers (Retry-After,
    WWW-Authenticate) as trailing metadata. Raises, as ``context.abort`` does."""
    code = grpc.StatusCode[GRPC_CODES.get(problem.status, "INTERNAL")]
    trailers = tuple(
        (header.lower(), value)
        for header, value in problem.headers.items()
        if header.lower() not in _HEADERS_NOT_SENT
    )
    await context.abort(code, problem.message, trailers)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
