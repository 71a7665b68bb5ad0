"""The runtime's log format and level, for every command (serve, fetch) alike."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MODELPLANE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # uvicorn logs its start-up and shutdown steps as "uvicorn.error" at INFO, and every
    # malformed request at WARNING (a hostile client could fill the log); only its errors
    # are kept. The runtime says what it serves, and when it drains, itself.
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)


def write_termination_message(path: Path, message: str) -> None:
    """In a pod, a container's last word (the kubelet mounts the file; the operator reads it
    into status); elsewhere there is no file, and nothing is written."""
    if path.is_file():
        with contextlib.suppress(OSError):
            path.write_text(message[:4000])
