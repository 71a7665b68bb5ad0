"""One file over http(s), never hanging: a stall timeout, retries, resume, a time budget.

A download in an init container that waits for ever leaves a pod "fetching" for ever
(KServe #5611 is that failure). So every read waits at most ``stall_seconds``; what may
pass (a refused or reset connection, a stall, a body cut short, 408, 429, 5xx) is tried
again after a pause that doubles (a server's Retry-After is honoured), resuming with a
Range request where the server allows it (``Accept-Ranges: bytes`` and a validator for
``If-Range``, so a file that changed meanwhile is fetched whole again, never spliced);
``attempts`` failures in a row without a new byte, or ``budget_seconds`` in all, end the
fetch with :class:`FetchStalled`, naming the attempt and the last error. What will not
pass (404, 403, a bad URL) fails at once.

The standard library's client, not fsspec's aiohttp one: it gives a timeout per read,
the status and headers of every answer, and reads of one system call each (``read1``),
so that the budget is checked however slowly the bytes trickle in. Like fsspec, it
ignores proxy variables.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from modelplane_api import facts
from modelplane_runtime.errors import FetchError, FetchStalled

log = logging.getLogger("modelplane.fetch")

_CHUNK = 1 << 20
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Patience:
    """How long a download may take, and how often it is tried again."""

    stall_seconds: float = facts.FETCH_STALL_SECONDS
    budget_seconds: float = facts.FETCH_BUDGET_SECONDS
    attempts: int = facts.FETCH_ATTEMPTS
    first_pause_seconds: float = 1.0
    longest_pause_seconds: float = 60.0


class Sink(Protocol):
    """Where the bytes go: the fetch hashes, caps and writes them."""

    written: int

    def expect(self, total: int | None) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    def restart(self) -> None:
        """The server sends the file from its start again: forget what was written."""


class _Transient(Exception):
    """A failure another attempt may not meet."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Resume:
    """What the first answer said about resuming: ranges accepted, and the validator that
    makes a resumed body the same file's (a strong ETag, else Last-Modified)."""

    ranges: bool = False
    validator: str | None = None


def download(uri: str, sink: Sink, patience: Patience | None = None) -> None:
    patience = patience or Patience()
    started = time.monotonic()
    deadline = started + patience.budget_seconds
    resume = _Resume()
    attempt = 0
    fruitless = 0  # failed attempts in a row that brought no new byte
    while True:
        attempt += 1
        before = sink.written
        try:
            _attempt(uri, sink, resume, patience.stall_seconds, deadline)
            return
        except _Transient as exc:
            fruitless = 0 if sink.written > before else fruitless + 1
            pause = min(
                patience.longest_pause_seconds,
                patience.first_pause_seconds * 2 ** max(fruitless - 1, 0),
            )
            pause = random.uniform(pause / 2, pause)  # noqa: S311 - jitter, not a secret
            if exc.retry_after is not None:
                pause = max(pause, exc.retry_after)
            state = f"attempt {attempt}, {sink.written} bytes fetched"
            if fruitless >= patience.attempts:
                why = f"{fruitless} attempts in a row fetched nothing"
            elif time.monotonic() + pause >= deadline:
                why = f"the fetch's budget of {patience.budget_seconds:g} s is spent"
            else:
                resuming = (
                    f"resuming at byte {sink.written}"
                    if resume.ranges and resume.validator and sink.written
                    else "from the start"
                )
                log.warning(
                    "%s %s: attempt %d failed (%s); attempt %d in %.1f s, %s",
                    facts.FETCH_RETRYING,
                    uri,
                    attempt,
                    exc,
                    attempt + 1,
                    pause,
                    resuming,
                )
                time.sleep(pause)
                continue
            raise FetchStalled(f"cannot fetch '{uri}': {exc} ({state}; gave up: {why})") from None


def _attempt(uri: str, sink: Sink, resume: _Resume, stall: float, deadline: float) -> None:
    offset = sink.written if resume.ranges and resume.validator else 0
    if offset == 0 and sink.written:
        sink.restart()
    headers = {"Accept-Encoding": "identity", "User-Agent": "modelplane-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = str(resume.validator)
    timeout = max(0.01, min(stall, deadline - time.monotonic()))
    with _open(uri, headers, timeout) as response:
        if response.status == 206 and offset:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Transient(f"asked for byte {offset} on, the server sent from {start}")
        else:
            if sink.written:
                sink.restart()  # the file changed, or ranges are not served after all
            total = _number(response.headers.get("Content-Length"))
            etag = response.headers.get("ETag")
            resume.ranges = response.headers.get("Accept-Ranges", "").strip() == "bytes"
            resume.validator = (
                etag
                if etag and not etag.startswith("W/")
                else response.headers.get("Last-Modified")
            )
        sink.expect(total)
        while True:
            if time.monotonic() >= deadline:
                raise _Transient(f"still fetching when the budget ran out ({sink.written} bytes)")
            try:
                chunk = response.read1(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(_network(exc, timeout)) from None
            if not chunk:
                break
            sink.write(chunk)  # outside the try: a full volume is no network failure
        if total is not None and sink.written < total:
            raise _Transient(f"the connection closed after {sink.written} of {total} bytes")


def _open(uri: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    """The answer's status and headers, or the failure classified: may pass, or not."""
    request = urllib.request.Request(uri, headers=headers)  # noqa: S310 - http(s) only
    try:
        response: http.client.HTTPResponse = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in {408, 429} or exc.code >= 500:
            raise _Transient(
                f"HTTP {exc.code} {exc.reason}", _retry_after(exc.headers.get("Retry-After"))
            ) from None
        raise FetchError(f"cannot fetch '{uri}': HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, OSError):
            raise _Transient(_network(exc.reason, timeout)) from None
        raise FetchError(f"cannot fetch '{uri}': {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(_network(exc, timeout)) from None
    return response


def _network(exc: BaseException, waited: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"stalled: no byte for {waited:.3g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    return f"{type(exc).__name__}: {exc}"


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def _content_range(text: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); TOTAL may be ``*``."""
    found = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", text or "")
    if found is None:
        return None, None
    total = found.group(2)
    return int(found.group(1)), int(total) if total != "*" else None


def _retry_after(text: str | None) -> float | None:
    """Seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not text:
        return None
    if text.strip().isdigit():
        return float(text.strip())
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
