"""Errors that carry their HTTP status; rendered once, as ``{"error": ...}`` over REST, and
as the gRPC status code :data:`GRPC_CODES` gives that HTTP status over gRPC."""

from __future__ import annotations

import errno

import orjson


def error_body(message: str) -> bytes:
    """The body of every error the runtime answers, at whichever layer: route, middleware
    or connection."""
    return orjson.dumps({"error": message})


# The same refusals over gRPC: the names of grpc.StatusCode members, by the error's HTTP
# status (a status missing here is INTERNAL). A client sees the same refusal either way;
# a message over the transport's size limit is grpc's own RESOURCE_EXHAUSTED, like 413 here.
GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ServingError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServingError):
    status = 400


class BodyTimeout(ServingError):
    """The request body stopped arriving."""

    status = 408


class ClientClosed(ServingError):
    """The client went away before its answer: nobody to answer, not the server's fault."""

    status = 499


# The outcome label of a request whose client left (nginx's 499, "client closed request").
CLIENT_CLOSED = ClientClosed.status


class Unauthorized(ServingError):
    """No key, or one that is not (or no longer) valid: RFC 6750's Bearer challenge."""

    status = 401

    def __init__(self, message: str, error: str | None = None) -> None:
        challenge = 'Bearer realm="modelplane"'
        if error is not None:
            challenge += f', error="{error}"'
        super().__init__(message, {"WWW-Authenticate": challenge})


class Forbidden(ServingError):
    status = 403


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class NotReady(ServingError):
    status = 503


class _ComeBackLater(ServingError):
    """Refused for now: the client may retry after ``Retry-After`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after)})


class Overloaded(_ComeBackLater):
    """The batcher's queue or the memory budget is full."""

    status = 503


class TooManyRequests(_ComeBackLater):
    """Over a consumer's limit."""

    status = 429


class RequestTimeout(ServingError):
    status = 504


class FetchError(ServingError):
    """The model could not be copied or did not verify: nothing was written."""


# The volume cannot take what is written: full, over quota, over a file size limit.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class FetchStalled(FetchError):
    """A download that kept failing for reasons that may pass (stalls, resets, 5xx, 429)
    until its attempts or its time budget ran out: the kubelet may run the fetch again."""


class NoRoom(FetchError):
    """A fetch stopped because its volume is full; the model cache falls back on it."""


class AccessFileError(ServingError):
    """The access file cannot be read or is invalid at start-up: the server does not start."""
