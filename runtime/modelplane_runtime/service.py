"""The BentoML service: where each Open Inference Protocol route meets the model.

A thin shell. The OIP REST routes are a Starlette app mounted into the BentoML
service (BentoML routes take no path parameters); BentoML adds /livez, /readyz
and /metrics. Every route maps HTTP onto :class:`InferenceEngine` and back;
errors are rendered once, in :func:`_error`, as ``{"error": "..."}``.

    GET  /v2                              server metadata
    GET  /v2/health/live                  process is up
    GET  /v2/health/ready                 model loaded, warmed up, not draining
    GET  /v2/models/{name}                model metadata (signature, provider in use)
    GET  /v2/models/{name}/ready          model readiness
    POST /v2/models/{name}/infer          inference       (also under /versions/1/),
                                          routed by InferFastPath, its one route
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bentoml
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane_api import facts
from modelplane_api.settings import RuntimeSettings
from modelplane_runtime import __version__
from modelplane_runtime.access import AccessControl, ConsumerState
from modelplane_runtime.connections import MALFORMED_BODY
from modelplane_runtime.errors import (
    CLIENT_CLOSED,
    BadRequest,
    BodyTimeout,
    ClientClosed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    error_body,
)
from modelplane_runtime.inference import InferenceEngine, check_version, off_the_loop
from modelplane_runtime.json_tensors import SMALL_BODY, parse_body
from modelplane_runtime.memory import Reservation
from modelplane_runtime.metrics import MetricsCache, failure_outcome
from modelplane_runtime.protocol import (
    BINARY_HEADER,
    InferenceRequest,
    attach_binary_inputs,
    encode_response,
    split_binary_body,
    string_cost,
)

log = logging.getLogger("modelplane.runtime")


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]


def _route(handler: Callable[[Request, InferenceEngine], Awaitable[Response]]) -> Handler:
    """Give a handler the engine, and turn every failure into an OIP error body."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, _engine())
        except ClientClosed:
            log.info("%s %s: the client left before its answer", request.method, request.url.path)
            return Response(status_code=CLIENT_CLOSED)  # nobody is left to read it
        except ServingError as problem:
            return _error(problem.status, problem.message, problem.headers)
        except Exception:  # a bug: logged here with its traceback, never sent
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return _error(500, "internal error; see the server log")

    return endpoint


def _engine() -> InferenceEngine:
    engine: InferenceEngine = bentoml.get_current_service().engine
    return engine


def _check_version(request: Request) -> None:
    check_version(request.path_params.get("version"))


# --- routes -------------------------------------------------------------------


async def server_metadata(request: Request, engine: InferenceEngine) -> Response:
    return _json({"name": "modelplane", "version": __version__, "extensions": []})


async def live(request: Request, engine: InferenceEngine) -> Response:
    return _json({"live": True})


async def ready(request: Request, engine: InferenceEngine) -> Response:
    if (problem := engine.readiness_problem()) is not None:
        raise NotReady(problem)
    return _json({"ready": True})


async def model_metadata(request: Request, engine: InferenceEngine) -> Response:
    _check_version(request)
    return _json(engine.model_for(request.path_params["name"]).metadata())


async def model_ready(request: Request, engine: InferenceEngine) -> Response:
    _check_version(request)
    model = engine.model_for(request.path_params["name"])
    return _json({"name": model.name, "ready": True})


async def infer(request: Request, engine: InferenceEngine) -> Response:
    name = request.path_params["name"]
    consumer: ConsumerState | None = request.scope.get(CONSUMER)
    usage = consumer.usage() if consumer is not None else None
    request_bytes = response_bytes = 0
    outcome = "success"
    started = time.perf_counter()
    engine.metrics.pending.inc()
    try:
        _check_version(request)
        engine.model_for(name)  # 404/503 before reading a body we would not use
        reader = _BodyReader(request, engine.settings, engine.memory.reservation())
        try:
            # One timer for the whole request: it is moved up while the body is awaited
            # (the idle limit), then back (one asyncio.timeout costs a request ~8 us).
            async with asyncio.timeout_at(reader.answer_by) as reader.deadline:
                with engine.reading_body():
                    body = await reader.read()
                request_bytes = len(body)
                reader.deadline.reschedule(reader.answer_by)
                large = len(body) >= LARGE_BODY
                json_part, binary = split_binary_body(body, request.headers.get(BINARY_HEADER))
                parsed = await off_the_loop(_parse, json_part) if large else _parse(json_part)
                del body, json_part
                attach_binary_inputs(parsed, binary)
                if parsed.has_strings:  # BYTES cost per element, not per byte of body
                    reader.reservation.charge(string_cost(parsed), "BYTES elements")
                model, outputs = await engine.infer(
                    name, parsed, large=large, usage=usage, deadline=reader.answer_by
                )
            # (a coroutine call costs every small request a microsecond or two)
            content, headers = (
                await off_the_loop(encode_response, model.name, parsed, outputs)
                if large
                else encode_response(model.name, parsed, outputs)
            )
        except TimeoutError:
            raise reader.timed_out() from None
        finally:
            reader.reservation.release()
        media = "application/octet-stream" if headers else "application/json"
        response = Response(content, media_type=media, headers=headers)
        response_bytes = len(content)
    except ServingError as problem:
        outcome = failure_outcome(problem.status)
        engine.metrics.failure(problem.status)
        raise
    except Exception:
        outcome = failure_outcome(500)
        engine.metrics.failure(500)  # a bug; _route logs it and answers 500
        raise
    finally:
        engine.metrics.pending.dec()
        engine.metrics.request_seconds.observe(time.perf_counter() - started)
        if consumer is not None and usage is not None:
            consumer.meter.record(
                outcome,
                usage.rows,
                usage.compute_seconds,
                request_bytes,
                response_bytes,
                ran=usage.ran,
            )
    engine.metrics.success.inc()
    return response


class _BodyReader:
    """Reads one request body: bounded in size, in memory (the reservation) and in the
    silence between its parts (by moving the request's deadline, see ``infer``)."""

    deadline: asyncio.Timeout

    def __init__(
        self,
        request: Request,
        settings: RuntimeSettings,
        reservation: Reservation,
    ) -> None:
        self.request = request
        self.settings = settings
        self.reservation = reservation
        self.loop = asyncio.get_running_loop()
        self.answer_by = self.loop.time() + settings.request_timeout_seconds
        self.received = 0
        self.awaiting_body = False

    async def read(self) -> bytearray:
        limit = self.settings.max_request_bytes
        declared = self.request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise BadRequest("Content-Length must be a whole number")
            if int(declared) > limit:
                raise self._too_large(declared)
            await self._admit(int(declared))
        body = bytearray()
        while True:
            message = await self._receive()
            body += message.get("body", b"")
            if len(body) > limit:
                raise self._too_large(f"more than {limit}")
            if len(body) > self.reservation.body_bytes:  # chunked: reserved as it arrives
                await self._admit(len(body))
            if not message.get("more_body", False):
                return body

    async def _receive(self) -> Message:
        idle_until = self.loop.time() + self.settings.body_idle_seconds
        self.deadline.reschedule(min(idle_until, self.answer_by))
        self.awaiting_body = True
        message = await self.request.receive()
        self.awaiting_body = False
        if message["type"] == "http.disconnect":
            if self.request.scope.get(MALFORMED_BODY):
                raise BadRequest("malformed request body (bad chunked encoding)")
            raise ClientClosed("the client closed the connection")
        self.received += len(message.get("body", b""))
        return message

    async def _admit(self, size: int) -> None:
        """Reserve memory for a body of ``size``; when it must wait, the rest of the body
        is read and dropped first, so that the client gets the 503 rather than a reset."""
        try:
            self.reservation.grow_to(size)
        except Overloaded:
            message: Message = {"more_body": True}
            limit = self.settings.max_request_bytes
            while message.get("more_body", False) and self.received <= limit:
                message = await self._receive()
            raise

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body of {size} bytes is over the "
            f"{self.settings.max_request_bytes}-byte limit (runtime.maxRequestBytes)",
            {"Connection": "close"},
        )

    def timed_out(self) -> ServingError:
        """What a deadline that passed means: the body stalled, or the answer was late."""
        if self.awaiting_body and (self.deadline.when() or 0) < self.answer_by:
            idle = self.settings.body_idle_seconds
            return BodyTimeout(
                f"request body stalled: nothing received for {idle:g}s after "
                f"{self.received} bytes (MODELPLANE_BODY_IDLE_SECONDS)",
                {"Connection": "close"},
            )
        return RequestTimeout(
            f"no answer within {self.settings.request_timeout_seconds}s "
            "(runtime.requestTimeoutSeconds)"
        )


def _parse(body: bytes | bytearray | memoryview) -> InferenceRequest:
    document = parse_body(body)
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    engine = _engine()
    engine.start()
    # The model and the framework are loaded: move them out of the collector's sight,
    # so each gen-2 pass walks only what requests leave behind.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await engine.stop()


# Bodies from this size are parsed and decoded on a worker thread, off the event loop.
LARGE_BODY = SMALL_BODY

_MODEL = "/v2/models/{name}"
_VERSION = _MODEL + "/versions/{version}"


_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
_infer_endpoint = _route(infer)


class InferFastPath:
    """ASGI middleware in BentoML's stack that hands ``POST .../infer`` to its route at once.

    Measured on one core with a tiny model, BentoML's request context, its router
    (its own routes, then the mount) and Starlette's two error layers cost more per
    request than the model; inference skips them. Errors are still rendered by
    ``_route``, and the layers outside this one (BentoML's outermost error handler,
    the request deadline) still apply. Every other route takes the full stack, but
    ``GET /metrics``, answered here from ``metrics`` (rendered at most once a second).
    """

    def __init__(
        self,
        app: ASGIApp,
        access: AccessControl | None = None,
        metrics: tuple[MetricsCache, str] | None = None,
    ) -> None:
        self.app = app
        self.access = access  # restricted: the key is checked here (one layer less)
        self.metrics = metrics  # the cache and its media type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (found := _INFER_PATH.match(scope["path"])) is not None:
            if scope["method"] == "POST":
                params = {k: v for k, v in found.groupdict().items() if v}
                if self.access is not None and (
                    refusal := _refusal(self.access, params["name"], scope, inference=True)
                ):
                    await refusal(scope, receive, send)
                    return
                scope["path_params"] = params
                response = await _infer_endpoint(Request(scope, receive))
            else:
                response = _error(
                    405, f"inference is POST, not {scope['method']}", {"Allow": "POST"}
                )
            await response(scope, receive, send)
            return
        if (
            self.metrics is not None
            and scope["type"] == "http"
            and scope["path"] == facts.METRICS_PATH
            and scope["method"] == "GET"
        ):
            cache, media_type = self.metrics
            body, age = cache.body()
            headers = {METRICS_AGE_HEADER: f"{age:.3f}"}
            await Response(body, media_type=media_type, headers=headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# How old a /metrics answer is (seconds since it was rendered): for whoever needs one
# rendered after an event (tests).
METRICS_AGE_HEADER = "Modelplane-Metrics-Age"

# Reachable without a key on a restricted model: the kubelet's probes and Prometheus.
PUBLIC_PATHS = frozenset(
    {facts.LIVE_PATH, facts.READY_PATH, facts.METRICS_PATH, "/livez", "/readyz", "/healthz"}
)
_MODEL_IN_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)")
CONSUMER = "modelplane.consumer"  # the scope key under which a request's consumer travels


class AccessGuard:
    """ASGI middleware, just inside InferFastPath (which checks inference itself) when the
    model is restricted: every other request but the public ones needs a key."""

    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        found = _MODEL_IN_PATH.match(scope["path"])
        model = found.group("name") if found else None
        refusal = _refusal(self.access, model, scope, inference=scope["path"].endswith("/infer"))
        await (refusal or self.app)(scope, receive, send)


def _refusal(
    access: AccessControl, model: str | None, scope: Scope, *, inference: bool
) -> Response | None:
    """None when the request's key admits it (its consumer then in the scope), else the
    answer that refuses it."""
    try:
        scope[CONSUMER] = access.admit(
            _raw_header(scope, b"authorization"), model, inference=inference
        )
    except ServingError as refused:
        headers = refused.headers
        if _large_or_unknown_body(scope):  # left unread: closing beats reading it
            headers = {**headers, "Connection": "close"}
        return _error(refused.status, refused.message, headers)
    return None


def _large_or_unknown_body(scope: Scope) -> bool:
    if _header(scope, b"transfer-encoding") is not None:
        return True
    length = _header(scope, b"content-length")
    return length is not None and not (length.isdigit() and int(length) < SMALL_BODY)


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope, name)
    return None if value is None else value.decode("latin-1")


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class _BareStarlette(Starlette):
    """A Starlette app without its own error middleware: BentoML's app around it has
    them already, and each layer costs every request. (Still a Starlette app, so that
    BentoML runs its lifespan.)"""

    def build_middleware_stack(self) -> ASGIApp:
        return self.router


oip_app = _BareStarlette(
    routes=[
        Route("/v2", _route(server_metadata)),
        Route(facts.LIVE_PATH, _route(live)),
        Route(facts.READY_PATH, _route(ready)),
        *(Route(base, _route(model_metadata)) for base in (_MODEL, _VERSION)),
        *(Route(base + "/ready", _route(model_ready)) for base in (_MODEL, _VERSION)),
    ],
    lifespan=_lifespan,
)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (405 for a wrong method, ...), as OIP errors."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "") or "error"
    if status == 404:
        detail = f"no route {request.url.path}; see GET /v2 and /v2/models/{{name}}"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return _error(status, detail, getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return _error(500, "internal error; see the server log")


def answer_errors_as_json(app: Starlette) -> None:
    """Every error the app itself produces is ``{"error": ...}``; no redirect is built
    from the request's Host header (slash redirects are off)."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    for router in (app.router, oip_app.router):
        router.redirect_slashes = False


def build_service(engine: InferenceEngine) -> Any:
    """The BentoML service around ``engine``: settings travel in it, not in the environment.

    BentoML's own request timeout is not configured here: the server replaces its
    middleware with a deadline built from the settings (see middleware.py).
    """

    @bentoml.service(name="modelplane-runtime", workers=1, logging={"access": {"enabled": False}})
    @bentoml.asgi_app(oip_app, path="/")
    class ModelRuntime:
        """Loads the model once per process; the OIP routes reach it as ``engine``."""

        def __init__(self) -> None:
            self.engine = engine
            self.engine.load()

        def __is_ready__(self) -> bool:
            return self.engine.ready

    return ModelRuntime
