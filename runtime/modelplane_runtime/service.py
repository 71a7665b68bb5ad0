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

import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bentoml
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane_api import facts
from modelplane_runtime import __version__
from modelplane_runtime.errors import (
    BadRequest,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    ServingError,
)
from modelplane_runtime.inference import InferenceEngine
from modelplane_runtime.protocol import (
    BINARY_HEADER,
    InferenceRequest,
    attach_binary_inputs,
    encode_response,
    split_binary_body,
)

log = logging.getLogger("modelplane.runtime")


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = _json({"error": message}, status)
    response.headers.update(headers or {})
    return response


Handler = Callable[[Request], Awaitable[Response]]


def _route(handler: Callable[[Request, InferenceEngine], Awaitable[Response]]) -> Handler:
    """Give a handler the engine, and turn every failure into an OIP error body."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, _engine())
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
    version = request.path_params.get("version", facts.MODEL_VERSION)
    if version != facts.MODEL_VERSION:
        raise ModelNotFound(
            f"version '{version}' is not served; the only version is '{facts.MODEL_VERSION}'"
        )


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
    engine.metrics.pending.inc()
    try:
        _check_version(request)
        engine.model_for(name)  # 404/503 before reading a body we would not use
        with engine.reading_body():
            body = await _read_body(request, engine.settings.max_request_bytes)
        json_part, binary = split_binary_body(body, request.headers.get(BINARY_HEADER))
        parsed = _parse(json_part)
        attach_binary_inputs(parsed, binary)
        model, outputs = await engine.infer(name, parsed)
        content, headers = encode_response(model.name, parsed, outputs)
        media = "application/octet-stream" if headers else "application/json"
        response = Response(content, media_type=media, headers=headers)
    except ServingError as problem:
        engine.metrics.failure(problem.status)
        raise
    except Exception:
        engine.metrics.failure(500)  # a bug; _route logs it and answers 500
        raise
    finally:
        engine.metrics.pending.dec()
    engine.metrics.success.inc()
    return response


async def _read_body(request: Request, limit: int) -> bytes:
    def too_large(size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body of {size} bytes is over the {limit}-byte limit (runtime.maxRequestBytes)"
        )

    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length must be a whole number")
        if int(declared) > limit:
            raise too_large(declared)
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> InferenceRequest:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
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
    the request deadline) still apply. Every other route takes the full stack.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = _INFER_PATH.match(scope["path"])
            if found is not None:
                scope["path_params"] = {k: v for k, v in found.groupdict().items() if v}
                response = await _infer_endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
