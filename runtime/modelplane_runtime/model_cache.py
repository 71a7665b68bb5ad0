"""A model cache that replicas share (a ReadWriteMany volume), keyed by the model's digest.

``<cache>/<sha256>/`` is one entry, always complete: it appears by an atomic rename of a
staging directory, holds the model as fetched (one file, or the directory tree)
and ``.files``, every file's own digest, written at fill time. A hit verifies every
file against ``.files`` as it copies it out (one read for both): a corrupted entry is
removed and the model fetched again. Pods that start together take a lock per digest (``flock`` on
``<cache>/.locks/<sha256>``; NFSv4 and every CSI RWX driver in common use honour it),
so one downloads and the others wait, then hit. The model is copied from the entry into
the pod's own volume, so an entry can be evicted at any time without harm to pods that
already started. An entry's mtime is its last use; over the size limit the least
recently used entries go (never one that another pod holds). A volume that cannot take
the entry (full, over quota, over the size limit) does not fail the start: the model is
fetched without the cache, and the log says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from modelplane_api.facts import FETCHED_MODEL_FILE
from modelplane_runtime.archives import replace_directory
from modelplane_runtime.errors import NO_ROOM_ERRNOS, FetchError, NoRoom
from modelplane_runtime.fetch import file_sha256

log = logging.getLogger("modelplane.fetch")

FILES = ".files"  # sha256sum's format: every file of the entry with its digest
ENTRY_FILE = FETCHED_MODEL_FILE  # a single-file model's name inside its entry
LOCKS = ".locks"
_CHUNK = 1 << 20

Outcome = Literal["hit", "miss", "refilled", "bypassed"]
# Fetches the model into a path (a file, or a directory for a tree) and returns nothing.
Fill = Callable[[Path], None]


def fetch_through_cache(
    cache: Path,
    sha256: str,
    destination: Path,
    fill: Fill,
    *,
    tree: bool,
    max_bytes: int | None = None,
    lock_seconds: float = 3600.0,
) -> Outcome:
    """Put the model with digest ``sha256`` at ``destination`` (a file, or a directory when
    ``tree``), from the cache when it holds a good copy, else by ``fill`` into the cache.

    hit: copied from a verified entry. miss: fetched into a new entry. refilled: an
    entry failed verification and was fetched again. bypassed: the cache could not take
    the entry, so it was fetched straight to ``destination``."""
    entry = cache / sha256
    try:
        with _lock(cache, sha256, lock_seconds):
            outcome: Outcome = "miss"
            if entry.is_dir():
                try:
                    _copy_out(entry, destination, tree=tree, verify=True)
                except _Corrupt as exc:
                    log.warning(
                        "model cache entry %s is corrupt (%s): fetching it again", sha256, exc
                    )
                    _remove(entry)
                    outcome = "refilled"
                else:
                    os.utime(entry)  # its last use, for eviction
                    outcome = "hit"
            if outcome != "hit":
                _fill(cache, entry, fill, tree=tree)
                _copy_out(entry, destination, tree=tree, verify=False)
    except _NoRoom as exc:
        log.warning("model cache %s has no room (%s): fetching without it", cache, exc)
        fill(destination)
        return "bypassed"
    log.info("model cache %s: %s", outcome, sha256)
    if max_bytes is not None and not _evict(cache, keep=entry, max_bytes=max_bytes):
        log.warning(
            "model %s alone is over the cache's size limit of %d bytes: not kept", sha256, max_bytes
        )
        _remove_unless_held(cache, entry)
        return "bypassed"
    return outcome


class _NoRoom(Exception):
    """The cache volume cannot take the entry (full, over quota)."""


class _Corrupt(Exception):
    """An entry whose files are not the ones it lists, with their digests."""


@contextlib.contextmanager
def _lock(cache: Path, sha256: str, seconds: float) -> Iterator[None]:
    """One filler per digest across pods; the others wait (bounded), then hit."""
    locks = cache / LOCKS
    try:
        locks.mkdir(parents=True, exist_ok=True)
        handle = (locks / sha256).open("a")
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise _NoRoom(exc.strerror or str(exc)) from None
        raise FetchError(f"model cache {cache}: {exc.strerror or exc}") from None
    with handle:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FetchError(
                        f"model cache: another pod has held the lock on {sha256} for over "
                        f"{seconds:.0f}s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fill(cache: Path, entry: Path, fill: Fill, *, tree: bool) -> None:
    """Fetch into a staging directory that becomes the entry by one rename; _NoRoom when
    the volume cannot hold it."""
    try:
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
        try:
            content = staging / "entry"
            content.mkdir()
            fill(content / "tree" if tree else content / ENTRY_FILE)
            (content / FILES).write_text(_manifest(content))
            content.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except NoRoom as exc:
        raise _NoRoom(str(exc)) from None
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise _NoRoom(exc.strerror or str(exc)) from None
        raise FetchError(f"model cache {cache}: {exc.strerror or exc}") from None


def _files(entry: Path) -> list[Path]:
    return sorted(p for p in entry.rglob("*") if p.is_file() and p.name != FILES)


def _manifest(entry: Path) -> str:
    return "".join(f"{file_sha256(p)}  {p.relative_to(entry).as_posix()}\n" for p in _files(entry))


def _listed(entry: Path) -> dict[str, str]:
    """The entry's list of files and digests, checked against the files it holds."""
    try:
        lines = (entry / FILES).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        raise _Corrupt(f"no readable {FILES}") from None
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {p.relative_to(entry).as_posix() for p in _files(entry)}
    if present != set(listed):
        raise _Corrupt("its files differ from its list")
    return listed


def _copy_out(entry: Path, destination: Path, *, tree: bool, verify: bool) -> None:
    """Copy the entry's model to ``destination``, which appears only complete. With
    ``verify``, each file is hashed as it is copied (one read for both), and a file
    without its listed digest raises _Corrupt with ``destination`` untouched."""
    listed = _listed(entry) if verify else None
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        for path in _files(entry):
            name = path.relative_to(entry).as_posix()
            target = staged / name
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = _copy_hashing(path, target)
            if listed is not None and digest != listed[name]:
                raise _Corrupt(f"{name} does not have its digest")
        if tree:
            replace_directory(staged / "tree", destination)
        else:
            os.replace(staged / ENTRY_FILE, destination)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _remove(entry: Path) -> None:
    """Out of sight at once (a rename), then deleted."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_unless_held(cache: Path, entry: Path) -> None:
    with (cache / LOCKS / entry.name).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another pod is copying it out: the next filler's eviction takes it
        _remove(entry)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def _evict(cache: Path, *, keep: Path, max_bytes: int) -> bool:
    """Remove least recently used entries until the cache fits ``max_bytes``; False when
    ``keep`` alone does not fit. An entry another pod holds the lock of is left alone."""
    entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    sizes = {p: _size(p) for p in entries}
    if sizes.get(keep, 0) > max_bytes:
        return False
    total = sum(sizes.values())
    for victim in sorted(entries, key=lambda p: p.stat().st_mtime):
        if total <= max_bytes:
            break
        if victim == keep:
            continue
        _remove_unless_held(cache, victim)
        if not victim.exists():
            total -= sizes[victim]
            log.info("model cache: evicted %s (least recently used)", victim.name)
    return True
