"""Copy a model from a URI to a local file: streamed, sha256-verified, atomic.

http(s) goes through modelplane_runtime.download (a stall timeout, retries with
backoff, resume, a time budget); fsspec speaks the other protocols (file, and s3/gs
through s3fs/gcsfs, which read the usual cloud credentials from the environment or
workload identity, and retry with their own clients' timeouts). The file appears at
its destination only complete and verified, and never larger than ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from modelplane_api.facts import (
    ARCHIVE_SUFFIXES,
    FETCH_SCHEMES,
    MANIFEST_FILE,
    MAX_COMPRESSION_RATIO,
    MAX_MODEL_BYTES,
    MAX_MODEL_FILES,
    SHA256_PATTERN,
)
from modelplane_runtime.archives import extract, is_archive, replace_directory
from modelplane_runtime.download import Patience, download
from modelplane_runtime.errors import NO_ROOM_ERRNOS, FetchError, NoRoom

log = logging.getLogger("modelplane.fetch")

_PROTOCOL_PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}
_CHUNK = 1 << 20


def fetch(
    uri: str,
    destination: Path,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    patience: Patience | None = None,
) -> str:
    """Copy ``uri`` to ``destination``; return the sha256 of what was written."""
    _check_request(uri, sha256)
    with _errors_named(uri):
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(destination)
        descriptor, partial = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
    os.close(descriptor)
    try:
        with _errors_named(uri):
            actual = _copy_file(uri, Path(partial), max_bytes, patience)
            if sha256 is not None and actual != sha256:
                raise FetchError(f"'{uri}' has sha256 {actual}, not the expected {sha256}")
            os.replace(partial, destination)
    finally:
        Path(partial).unlink(missing_ok=True)
    return actual


def remove_stale_staging(destination: Path) -> None:
    """Remove what a fetch to ``destination`` that was killed midway left beside it (a
    partial file, a staged tree, an archive, an old tree): every staging name starts with
    ``.<name>.``, and one fetch at a time writes a destination (a pod's init container),
    so whatever is there when a fetch starts is stale. Without this, every restart of an
    init container killed midway would leave one more copy on the pod's volume."""
    with contextlib.suppress(FileNotFoundError):
        for stale in destination.parent.glob(f".{glob.escape(destination.name)}.*"):
            log.info("removing %s, left by a fetch that did not finish", stale)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _errors_named(uri: str) -> Iterator[None]:
    """Whatever fsspec and its backends raise, as one FetchError naming the URI."""
    try:
        yield
    except FetchError:
        raise
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise NoRoom(f"cannot fetch '{uri}': {exc.strerror} (the volume is full)") from None
        raise FetchError(f"cannot fetch '{uri}': {type(exc).__name__}: {exc}") from None
    except ImportError as exc:
        scheme = urlsplit(uri).scheme
        package = _PROTOCOL_PACKAGES.get(scheme, str(exc))
        raise FetchError(f"fetching {scheme}:// needs the {package} package ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise many kinds
        raise FetchError(f"cannot fetch '{uri}': {type(exc).__name__}: {exc}") from None


def _check_request(uri: str, sha256: str | None) -> None:
    scheme = urlsplit(uri).scheme
    if scheme not in FETCH_SCHEMES:
        raise FetchError(f"cannot fetch '{uri}': the scheme must be one of {sorted(FETCH_SCHEMES)}")
    if sha256 is not None and not re.fullmatch(SHA256_PATTERN, sha256):
        raise FetchError("--sha256 must be 64 lowercase hex characters")


# --- directories and archives -----------------------------------------------------------


def fetch_tree(
    uri: str,
    destination: Path,
    *,
    sha256: str | None = None,
    max_bytes: int = MAX_MODEL_BYTES,
    max_files: int = MAX_MODEL_FILES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
    patience: Patience | None = None,
    keep_manifest: bool = False,
) -> str | None:
    """Copy a model directory (``uri`` ending in ``/``) or archive (.tar, .tar.gz, .tgz,
    .zip) to the directory ``destination``, which appears only complete and verified.

    ``sha256`` is the archive's digest, or for a directory the digest of its SHA256SUMS
    manifest, which then lists every file fetched with its own digest (an http(s)
    directory needs one: it cannot be listed); ``keep_manifest`` keeps that manifest in
    the tree (the model cache checks an entry against it). Return the digest checked.

    ``max_bytes`` bounds what the fetch writes to the volume at once (an archive and what
    it unpacks to, together), ``max_files`` the entries, files and directories alike, and
    ``max_ratio`` what an archive unpacks to, in multiples of its own size."""
    _check_request(uri, sha256)
    with _errors_named(uri):
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(destination)
        staged = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        with _errors_named(uri):
            if is_archive(urlsplit(uri).path):
                digest: str | None = _fetch_archive(
                    uri,
                    staged,
                    sha256,
                    max_bytes=max_bytes,
                    max_files=max_files,
                    max_ratio=max_ratio,
                    patience=patience,
                )
            elif uri.endswith("/"):
                digest = _fetch_directory(
                    uri,
                    staged,
                    sha256,
                    max_bytes,
                    max_files,
                    keep_manifest=keep_manifest,
                    patience=patience,
                )
            else:
                raise FetchError(
                    f"'{uri}' is neither a directory (ending in '/') nor an archive "
                    f"({', '.join(ARCHIVE_SUFFIXES)})"
                )
            replace_directory(staged, destination)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return digest


def _fetch_archive(
    uri: str,
    staged: Path,
    sha256: str | None,
    *,
    max_bytes: int,
    max_files: int,
    max_ratio: float,
    patience: Patience | None,
) -> str:
    name = PurePosixPath(urlsplit(uri).path).name
    archive = staged.with_name(staged.name + "-" + name)
    try:
        digest = _copy_file(uri, archive, max_bytes, patience)
        if sha256 is not None and digest != sha256:
            raise FetchError(f"'{uri}' has sha256 {digest}, not the expected {sha256}")
        extract(
            archive,
            staged,
            max_bytes=max_bytes - archive.stat().st_size,  # both are on the volume at once
            max_files=max_files,
            max_ratio=max_ratio,
        )
    finally:
        archive.unlink(missing_ok=True)
    return digest


def _fetch_directory(
    uri: str,
    staged: Path,
    sha256: str | None,
    max_bytes: int,
    max_files: int,
    *,
    keep_manifest: bool = False,
    patience: Patience | None = None,
) -> str | None:
    import fsspec

    if sha256 is None and urlsplit(uri).scheme in {"http", "https"}:
        raise FetchError(
            f"'{uri}': an http(s) directory cannot be listed; give the sha256 of its "
            f"{MANIFEST_FILE} manifest (sha256sum's format) that lists its files"
        )
    if sha256 is None:
        fs, root = fsspec.core.url_to_fs(uri)
        found = sorted(fs.find(root))
        names = [PurePosixPath(p).relative_to(PurePosixPath(root)).as_posix() for p in found]
        wanted: dict[str, str | None] = dict.fromkeys(names)
    else:
        manifest = staged / MANIFEST_FILE
        if _copy_file(uri + MANIFEST_FILE, manifest, 1 << 24, patience) != sha256:
            raise FetchError(f"{uri}{MANIFEST_FILE} does not have the expected sha256 {sha256}")
        wanted = read_manifest(manifest)
        if not keep_manifest:
            manifest.unlink()
    if len(wanted) > max_files:
        raise FetchError(f"'{uri}' holds {len(wanted)} files, over the cap of {max_files}")
    total = 0
    for name, expected in wanted.items():
        target = _inside(staged, name)
        digest = _copy_file(uri + name, target, max_bytes - total, patience)
        total += target.stat().st_size
        if expected is not None and digest != expected:
            raise FetchError(
                f"{uri}{name} has sha256 {digest}, not {expected} as {MANIFEST_FILE} says"
            )
    return sha256


def read_manifest(path: Path) -> dict[str, str | None]:
    return dict(parse_manifest(path.read_bytes()))


def parse_manifest(text: bytes) -> dict[str, str]:
    """A SHA256SUMS manifest (sha256sum's format): each file's relative path and digest."""
    try:
        lines = text.decode().splitlines()
    except UnicodeDecodeError:
        raise FetchError(f"{MANIFEST_FILE} is not UTF-8 text") from None
    files: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        found = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        if found is None:
            raise FetchError(f"{MANIFEST_FILE} line {number} is not '<sha256>  <path>'")
        files[found.group(2)] = found.group(1)
    if not files:
        raise FetchError(f"{MANIFEST_FILE} lists no file")
    return files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(root: Path, name: str) -> Path:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise FetchError(f"'{name}' would land outside the model directory")
    target = root.joinpath(*path.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _copy_file(
    uri: str, target: Path, max_bytes: int | None = None, patience: Patience | None = None
) -> str:
    """Stream ``uri`` into ``target`` (at most ``max_bytes``), synced; return its sha256."""
    with target.open("wb") as out:
        sink = _Written(uri, out, max_bytes)
        if urlsplit(uri).scheme in {"http", "https"}:
            download(uri, sink, patience)  # one streamed GET per attempt, never ranges of it
        else:
            import fsspec

            opened = fsspec.open(uri, "rb")
            with opened as source:
                sink.expect(getattr(source, "size", None) or _size(opened))
                while chunk := source.read(_CHUNK):
                    sink.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return sink.digest.hexdigest()


class _Written:
    """Where a download's bytes go: capped, hashed and counted as they arrive."""

    def __init__(self, uri: str, out: IO[bytes], max_bytes: int | None) -> None:
        self.uri = uri
        self.out = out
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.progress = _Progress(uri)
        self.written = 0

    def expect(self, total: int | None) -> None:
        self.progress.total = total
        if total is not None and self.max_bytes is not None and total > self.max_bytes:
            raise FetchError(
                f"'{self.uri}' is {total} bytes, larger than the cap of {self.max_bytes} bytes"
            )

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        self.progress.advance(len(chunk))
        if self.max_bytes is not None and self.written > self.max_bytes:
            raise FetchError(f"'{self.uri}' is larger than the cap of {self.max_bytes} bytes")
        self.digest.update(chunk)
        self.out.write(chunk)

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.digest = hashlib.sha256()
        self.written = self.progress.done = 0


def _size(opened: Any) -> int | None:
    """The size the server states (a HEAD over http), for progress; None when it will not."""
    try:
        size = opened.fs.size(opened.path)
    except Exception:  # noqa: BLE001 - progress only: any failure means "unknown"
        return None
    return size if isinstance(size, int) else None


class _Progress:
    """Logs bytes so far, the total when known, and the rate, every few seconds."""

    EVERY_SECONDS = 5.0

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.total: int | None = None
        self.done = 0
        self.started = self.logged = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.logged >= self.EVERY_SECONDS:
            self.logged = now
            self._log()

    def _log(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        total = f" of {self.total / 2**20:.1f} MiB" if self.total else ""
        log.info(
            "fetching %s: %.1f MiB%s (%.1f MiB/s)",
            self.uri,
            self.done / 2**20,
            total,
            self.done / 2**20 / elapsed,
        )
