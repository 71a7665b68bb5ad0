"""Errors that carry their HTTP status; rendered once, as ``{"error": ...}``."""

from __future__ import annotations


class ServingError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    status = 400


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class NotReady(ServingError):
    status = 503


class RequestTimeout(ServingError):
    status = 504


class FetchError(ServingError):
    """The model could not be copied or did not verify: nothing was written."""
