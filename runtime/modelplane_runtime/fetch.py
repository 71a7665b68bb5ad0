"""Copy a model from a URI to a local file: streamed, sha256-verified, atomic.

fsspec speaks the protocols (file, http(s), and s3/gs through s3fs/gcsfs, which
read the usual cloud credentials from the environment or workload identity).
The file appears at its destination only complete and verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from modelplane_api.facts import FETCH_SCHEMES, SHA256_PATTERN
from modelplane_runtime.errors import FetchError

_PROTOCOL_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
_CHUNK = 1 << 20


def fetch(uri: str, destination: Path, *, sha256: str | None = None) -> str:
    """Copy ``uri`` to ``destination``; return the sha256 of what was written."""
    scheme = urlsplit(uri).scheme
    if scheme not in FETCH_SCHEMES:
        raise FetchError(f"cannot fetch '{uri}': the scheme must be one of {sorted(FETCH_SCHEMES)}")
    if sha256 is not None and not re.fullmatch(SHA256_PATTERN, sha256):
        raise FetchError("--sha256 must be 64 lowercase hex characters")
    import fsspec

    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    digest = hashlib.sha256()
    try:
        with os.fdopen(descriptor, "wb") as target, fsspec.open(uri, "rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise FetchError(f"'{uri}' has sha256 {actual}, not the expected {sha256}")
        os.replace(partial, destination)
    except FetchError:
        raise
    except ImportError as exc:
        package = _PROTOCOL_PACKAGES.get(scheme, str(exc))
        raise FetchError(f"fetching {scheme}:// needs the {package} package ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise many kinds
        raise FetchError(f"cannot fetch '{uri}': {type(exc).__name__}: {exc}") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return actual
