"""HTTP/1.1 over a bare socket: for what a client library refuses to send, or sends too well."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket) -> RawResponse | None:
    """One response (Content-Length, chunked, or until close); None if the server closed
    the connection without answering. Bounded by the socket's timeout."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            if not received:
                return None
            raise ConnectionError(f"connection closed inside the headers: {received!r}")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        wanted = int(headers["content-length"])
        while len(rest) < wanted and (chunk := sock.recv(65536)):
            rest += chunk
        body = rest[:wanted]
    elif headers.get("transfer-encoding") == "chunked":
        while not rest.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            rest += chunk
        body = _unchunk(rest)
    else:
        while chunk := sock.recv(65536):
            rest += chunk
        body = rest
    return RawResponse(int(status_line.split()[1]), headers, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def exchange(port: int, request: bytes, timeout: float = 30) -> RawResponse:
    with connect(port, timeout) as sock:
        sock.sendall(request)
        return answer(sock)


def answer(sock: socket.socket) -> RawResponse:
    response = read_response(sock)
    if response is None:
        raise ConnectionError("the server closed the connection without an answer")
    return response


def closed_by_peer(sock: socket.socket) -> bool:
    """Has the server closed this connection (EOF or reset), within the socket's timeout?"""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def infer_request(
    model: str, body: bytes, *, extra_headers: str = "", content_length: int | None = None
) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body
