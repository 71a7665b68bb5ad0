"""What the runtime changes in BentoML's ASGI middleware stack, and why.

BentoML 1.4 wraps every request in four middlewares. Measured on one core with a
tiny model, they cost more than the model itself:

- ``TimeoutMiddleware`` schedules a timer per request with ``loop.call_later`` and
  never cancels it: each finished request stays referenced (about 20 objects) for
  ``traffic.timeout`` seconds, and the garbage collector's gen-2 passes over those
  piles take 50-400 ms, which is the p99. It is replaced by :class:`RequestDeadline`,
  the same contract (504 if no response has started in time) on ``asyncio.timeout``,
  whose timer is cancelled as the response starts; its timeout comes straight from
  the runtime's settings.
- ``OpenTelemetryMiddleware`` opens a span per request even with no exporter
  configured; it is dropped (tracing is not offered by this runtime).
- ``RunnerTrafficMetricsMiddleware`` keeps BentoML's own per-route HTTP histograms;
  it is dropped: the runtime's own metrics (modelplane_inference_*) count and time
  every inference, and /metrics still serves them.

``ContextMiddleware`` (BentoML's request context) stays for every route but
inference, which the service's ``InferFastPath`` hands straight to its route.
"""

from __future__ import annotations

import asyncio

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane_runtime.errors import error_body

DROPPED = ("OpenTelemetryMiddleware", "RunnerTrafficMetricsMiddleware", "TimeoutMiddleware")


class RequestDeadline:
    """504 when no response has started within ``timeout`` seconds; no timer outlives it."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        try:
            async with asyncio.timeout(self.timeout) as deadline:

                async def send_and_stop_the_clock(message: Message) -> None:
                    nonlocal started
                    if not started:
                        started = True
                        deadline.reschedule(None)
                    await send(message)

                await self.app(scope, receive, send_and_stop_the_clock)
        except TimeoutError:
            if started:
                raise
            body = error_body(f"no response within {self.timeout:g} seconds")
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})


def lean(middleware: list[Middleware], fast_path: Middleware, timeout: float) -> list[Middleware]:
    """BentoML's middleware list with the changes above: ``fast_path`` outermost (the
    inference route bounds its own time, to the second, and counts it), then the request
    deadline for every other route, ahead of everything BentoML keeps."""
    kept = [m for m in middleware if getattr(m.cls, "__name__", "") not in DROPPED]
    return [fast_path, Middleware(RequestDeadline, timeout=timeout), *kept]
