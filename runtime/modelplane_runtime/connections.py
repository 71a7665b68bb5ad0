"""What one client connection may cost before the application sees a request.

uvicorn's httptools protocol, with the limits it lacks (measured against it):

- no deadline for the request line and headers: a connection that sends nothing,
  or dribbles a header a byte at a time, was kept forever. Here the headers must
  end within ``header_timeout_seconds`` of the connection opening (or of the first
  byte of a keep-alive connection's next request): 408, then closed.
- no bound on the header block: its parser's cost grows with the square of a
  header's length. Here the request line and headers together are cut off at
  ``max_header_bytes`` before they reach the parser: 431, then closed.
- no bound on open connections (its ``limit_concurrency`` still accepts them and
  answers plain text). Here a connection beyond ``max_connections`` is answered
  503 with ``Retry-After`` and closed at once, so file descriptors stay bounded.
- its own error answers are plain text; here every one is ``{"error": ...}``.

A request body that stalls is bounded by the application (see service.py), which
answers 408 itself; a malformed body is marked in the request's scope, so that
the application counts it as the client's error, not its own.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.errors import error_body
from modelplane_runtime.metrics import connections_refused

log = logging.getLogger("modelplane.runtime")

# Set in a request's scope when uvicorn's parser refused the rest of its body.
MALFORMED_BODY = "modelplane.malformed_body"
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_seconds: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def of(cls, settings: RuntimeSettings) -> ConnectionLimits:
        return cls(
            settings.header_timeout_seconds, settings.max_header_bytes, settings.max_connections
        )


def raw_error(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = error_body(message)
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    head += ["content-type: application/json", f"content-length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in extra]
    head += ["connection: close", "", ""]
    return "\r\n".join(head).encode("ascii") + body


class Closing:
    """Set once shutdown begins: every response from then on says ``connection: close``."""

    def __init__(self) -> None:
        self.started = False


def guarded_protocol(limits: ConnectionLimits, closing: Closing) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol bound to ``limits`` (uvicorn instantiates a class)."""
    return type(
        "GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "closing": closing}
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    limits: ConnectionLimits
    closing: Closing

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0
        self._tail = b""
        # When the headers now awaited began: the connection, or the next request's first
        # byte; None while a keep-alive connection idles (uvicorn's keep-alive timer's job).
        self._headers_since: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    # --- connection -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                f"too many open connections (over {self.limits.max_connections}, "
                "MODELPLANE_MAX_CONNECTIONS); retry later",
                (("retry-after", "1"),),
            )
            return
        self._headers_since = self.loop.time()
        # One timer per connection, re-armed when it fires: a timer per request would cost
        # every request a schedule and a cancel.
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_seconds, self._check_headers
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            if self._headers_since is None:  # the first bytes of a keep-alive's next request
                self._headers_since = self.loop.time()
            tail, self._tail = self._tail, data[-3:]
            counted = self._header_bytes + len(data)  # may count body bytes: harmless below
            if counted > self.limits.max_header_bytes:
                seen = tail + data  # over the limit unless the headers end in this piece
                ends = [i for i in (seen.find(end) for end in _HEADER_ENDS) if i >= 0]
                counted = self._header_bytes + ((min(ends) - len(tail)) if ends else len(data))
                if counted > self.limits.max_header_bytes:
                    self._refuse(
                        431,
                        f"request line and headers exceed {self.limits.max_header_bytes} "
                        "bytes (MODELPLANE_MAX_HEADER_BYTES)",
                    )
                    return
            self._header_bytes = counted
        super().data_received(data)

    # --- parser callbacks -----------------------------------------------------

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        super().on_headers_complete()
        if self.closing.started and self.cycle is not None:
            # A keep-alive client learns from this answer to reconnect, through the Service,
            # to a pod that is staying.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._tail = b""
        self._headers_since = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses, as JSON; mid-body, the request
        in flight learns it was the client's error."""
        if self.cycle is not None and not self.cycle.response_complete:
            cast(dict[str, Any], self.cycle.scope)[MALFORMED_BODY] = True
            if self.cycle.response_started:
                self.transport.close()
                return
        self._refuse(400, "malformed HTTP request: " + msg.rstrip("."))

    # --- timers and refusals --------------------------------------------------

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _check_headers(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        timeout = self.limits.header_timeout_seconds
        since = self._headers_since
        if not self._awaiting_headers or since is None:  # a request in flight, or idle
            self._header_timer = self.loop.call_later(timeout, self._check_headers)
            return
        waited = self.loop.time() - since
        if waited < timeout:
            self._header_timer = self.loop.call_later(timeout - waited, self._check_headers)
            return
        if self._header_bytes == 0 and self.cycle is None:
            self.transport.close()  # connected and said nothing: no answer owed
            return
        self._refuse(
            408,
            f"request headers not received within {timeout:g} seconds "
            "(MODELPLANE_HEADER_TIMEOUT_SECONDS)",
        )

    def _refuse(self, status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        # Not logged above debug: a flood of hostile connections must not flood the log too.
        log.debug("connection from %s refused with %d: %s", _peer(self.client), status, message)
        connections_refused(status)
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self.transport.write(raw_error(status, message, extra))
            self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
