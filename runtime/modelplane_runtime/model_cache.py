"""A model cache that replicas share (a ReadWriteMany volume), keyed by the model's digest.

``<cache>/<sha256>/`` is one entry, always complete: it appears by an atomic rename of a
staging directory and holds the model as published, so that the key itself proves it:
one file (a graph, or an archive) whose digest is ``sha256``, or a directory tree whose
``SHA256SUMS`` manifest has digest ``sha256`` and lists every file with its digest.
Anyone who can write the volume can change an entry, so nothing in it is trusted: every
copy out of the cache (hit or miss) is hashed as it is copied (one read for both) and
checked against the key, through the manifest for a tree; an archive is unpacked only
from that verified, pod-private copy. An entry that fails is removed and the model
fetched again (``refilled``), never served. Pods that start together take a lock per
digest (``flock`` on ``<cache>/.locks/<sha256>``; NFSv4 and every CSI RWX driver in
common use honour it), so one downloads and the others wait, then hit; under that lock
the staging a killed filler left is removed. The model is copied from the entry into
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
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelplane_api.facts import FETCHED_MODEL_FILE, MANIFEST_FILE
from modelplane_runtime.archives import replace_directory
from modelplane_runtime.errors import NO_ROOM_ERRNOS, FetchError, NoRoom
from modelplane_runtime.fetch import parse_manifest, remove_stale_staging

log = logging.getLogger("modelplane.fetch")

ENTRY_FILE = FETCHED_MODEL_FILE  # a single-file model's name inside its entry
TREE = "tree"  # a directory model's tree inside its entry, its SHA256SUMS included
LOCKS = ".locks"
STAGING = ".staging-"  # + <sha256>-<random>: a fill in progress, or one killed midway
TRASH = ".trash-"  # + <sha256>-<pid>: an entry being removed
_LEFTOVER = re.compile(rf"^({re.escape(STAGING)}|{re.escape(TRASH)})([0-9a-f]{{64}})-")
_CHUNK = 1 << 20

Outcome = Literal["hit", "miss", "refilled", "bypassed"]
# Fetches the model as published into a path (a file, or a directory for a tree).
Fill = Callable[[Path], None]


@dataclass(frozen=True)
class Archive:
    """An archive model: cached as published (its digest is the key) and unpacked from a
    verified copy on the way out."""

    name: str  # the archive's file name, which says its format (.tar.gz, .zip, ...)
    unpack: Callable[[Path, Path], None]  # (the verified archive, an empty directory)


# How the model is published: one file, a directory with its SHA256SUMS, or an archive.
Form = Literal["file", "directory"] | Archive


def fetch_through_cache(
    cache: Path,
    sha256: str,
    destination: Path,
    fill: Fill,
    *,
    form: Form,
    max_bytes: int | None = None,
    lock_seconds: float = 3600.0,
) -> Outcome:
    """Put the model with digest ``sha256`` at ``destination`` (a file, or a directory for a
    directory or an archive), from the cache when it holds a good copy, else by ``fill``
    into the cache. ``fill`` fetches the model as published: for a directory, with its
    manifest kept.

    hit: copied from an entry that has the digest. miss: fetched into a new entry.
    refilled: an entry failed verification and was fetched again. bypassed: the cache
    could not take the entry, so it was fetched straight to ``destination``."""
    entry = cache / sha256
    remove_stale_staging(destination)
    try:
        with _lock(cache, sha256, lock_seconds):
            _remove_leftovers(cache, sha256)
            outcome: Outcome = "miss"
            if entry.is_dir():
                try:
                    _copy_out(entry, sha256, destination, form)
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
                _fill(cache, sha256, fill, form)
                try:
                    _copy_out(entry, sha256, destination, form)
                except _Corrupt as exc:
                    _remove(entry)
                    raise FetchError(
                        f"model cache entry {sha256} changed while it was filled ({exc})"
                    ) from None
    except _NoRoom as exc:
        log.warning("model cache %s has no room (%s): fetching without it", cache, exc)
        _bypass(fill, destination, form)
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
    """An entry whose content does not have the digest that names it."""


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


def _remove_leftovers(cache: Path, sha256: str) -> None:
    """Staging and trash of this digest left by a fill or removal that was killed midway.
    Called under the digest's lock, so no live filler owns them; those of other digests
    go too when their lock is free. Eviction never counts them, so without this a cache
    outgrows its limit by one partial model per killed fill."""
    for path in cache.iterdir():
        found = _LEFTOVER.match(path.name)
        if found is None:
            continue
        if found.group(2) == sha256:
            _delete_leftover(path)
            continue
        with _held_if_free(cache, found.group(2)) as free:
            if free:
                _delete_leftover(path)


def _delete_leftover(path: Path) -> None:
    log.info("model cache: removing %s, left by a fetch that did not finish", path.name)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _held_if_free(cache: Path, sha256: str) -> Iterator[bool]:
    """The digest's lock if no one holds it (True), else nothing (False); never waits."""
    try:
        handle = (cache / LOCKS / sha256).open("a")
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _content_name(form: Form) -> str:
    if isinstance(form, Archive):
        return form.name
    return TREE if form == "directory" else ENTRY_FILE


def _fill(cache: Path, sha256: str, fill: Fill, form: Form) -> None:
    """Fetch into a staging directory that becomes the entry by one rename; _NoRoom when
    the volume cannot hold it."""
    try:
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f"{STAGING}{sha256}-"))
        try:
            content = staging / "entry"
            content.mkdir()
            fill(content / _content_name(form))
            content.rename(cache / sha256)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except NoRoom as exc:
        raise _NoRoom(str(exc)) from None
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise _NoRoom(exc.strerror or str(exc)) from None
        raise FetchError(f"model cache {cache}: {exc.strerror or exc}") from None


def _bypass(fill: Fill, destination: Path, form: Form) -> None:
    """Without the cache: ``fill`` (which verifies what it fetches) into the pod's volume,
    then what a copy out of an entry would leave there."""
    if form == "file":
        fill(destination)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        fetched = staged / _content_name(form)
        fill(fetched)
        if isinstance(form, Archive):
            form.unpack(fetched, staged / TREE)
        else:
            (fetched / MANIFEST_FILE).unlink(missing_ok=True)
        replace_directory(staged / TREE, destination)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _copy_out(entry: Path, sha256: str, destination: Path, form: Form) -> None:
    """Copy the entry's model to ``destination``, which appears only complete. Each file
    is hashed as it is copied (one read for both) and checked against ``sha256``, through
    the manifest for a tree; anything else raises _Corrupt with ``destination``
    untouched. An archive is unpacked from its verified copy, never from the entry."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        if form == "directory":
            _copy_tree(entry / TREE, sha256, staged / TREE)
            replace_directory(staged / TREE, destination)
            return
        name = _content_name(form)
        source = entry / name
        if not source.is_file() or source.is_symlink():
            raise _Corrupt(f"it holds no file {name}")
        digest = _copy_hashing(source, staged / name)
        if digest != sha256:
            raise _Corrupt(f"{name} has sha256 {digest}")
        if isinstance(form, Archive):
            form.unpack(staged / name, staged / TREE)
            replace_directory(staged / TREE, destination)
        else:
            os.replace(staged / name, destination)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _copy_tree(tree: Path, sha256: str, target: Path) -> None:
    """A directory model: its manifest has digest ``sha256``, it holds exactly the files
    the manifest lists, and each has its listed digest."""
    try:
        text = (tree / MANIFEST_FILE).read_bytes()
    except OSError:
        raise _Corrupt(f"no readable {MANIFEST_FILE}") from None
    if hashlib.sha256(text).hexdigest() != sha256:
        raise _Corrupt(f"its {MANIFEST_FILE} does not have the digest {sha256}")
    try:
        listed = parse_manifest(text)
    except FetchError as exc:
        raise _Corrupt(str(exc)) from None
    present = {p.relative_to(tree).as_posix() for p in _files(tree)} - {MANIFEST_FILE}
    if present != set(listed):
        raise _Corrupt(f"its files differ from what its {MANIFEST_FILE} lists")
    for name, expected in listed.items():
        source = tree / name
        if source.is_symlink() or not source.is_file():
            raise _Corrupt(f"{name} is not a regular file")
        copied = target.joinpath(*name.split("/"))
        copied.parent.mkdir(parents=True, exist_ok=True)
        if _copy_hashing(source, copied) != expected:
            raise _Corrupt(f"{name} does not have the digest its {MANIFEST_FILE} gives")


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _remove(entry: Path) -> None:
    """Out of sight at once (a rename), then deleted."""
    trash = entry.with_name(f"{TRASH}{entry.name}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_unless_held(cache: Path, entry: Path) -> None:
    with _held_if_free(cache, entry.name) as free:
        if free:
            _remove(entry)
        # else another pod is copying it out: the next filler's eviction takes it


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
