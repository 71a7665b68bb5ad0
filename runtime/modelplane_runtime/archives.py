"""Unpack a model archive (.tar, .tar.gz, .tgz, .zip) without trusting it.

An archive is hostile input: every member must be a regular file or a directory
whose path stays inside the destination (no absolute path, no ``..``), there are
no links and no device files. What it unpacks to is capped in bytes, in entries
(files and directories alike: a million empty directories cost inodes too) and in
multiples of the archive's own size (``max_ratio``), counted as it is written (a
decompression bomb is stopped at the cap, whatever its headers claim). A refusal names
the member and the rule.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from modelplane_api.facts import ARCHIVE_SUFFIXES, MAX_COMPRESSION_RATIO
from modelplane_runtime.errors import NO_ROOM_ERRNOS, FetchError, NoRoom

_COPY_CHUNK = 1 << 20
# What any archive may unpack to whatever its ratio: a small archive of small, repetitive
# files (a tokenizer's vocabulary) is no bomb.
_RATIO_FLOOR_BYTES = 16 << 20


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


class _Budget:
    def __init__(self, max_bytes: int, max_files: int, max_expanded: float) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_expanded = max_expanded
        self.bytes = 0
        self.files = 0

    def entry(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise FetchError(
                f"archive holds more than {self.max_files} files and directories (at "
                f"'{name}'); raise the cap (fetch --max-files) if the model really has that many"
            )

    def wrote(self, name: str, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise FetchError(
                f"archive unpacks to more than {self.max_bytes} bytes (at '{name}'); "
                "raise the cap (fetch --max-bytes, the model volume's sizeLimit in a pod) "
                "if the model really is that large"
            )
        if self.bytes > self.max_expanded:
            raise FetchError(
                f"archive unpacks to more than {self.max_expanded:.0f} bytes (at '{name}'), "
                "over the cap on its compression ratio: a decompression bomb? "
                "(fetch --max-ratio raises it)"
            )


def extract(
    archive: Path,
    into: Path,
    *,
    max_bytes: int,
    max_files: int,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> None:
    """Unpack ``archive`` (named by its suffix) into the empty directory ``into``."""
    expanded = max(max_ratio * archive.stat().st_size, _RATIO_FLOOR_BYTES)
    budget = _Budget(max_bytes, max_files, expanded)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, into, budget)
        else:
            _extract_tar(archive, into, budget)
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise NoRoom(
                f"cannot unpack {archive.name}: {exc.strerror} (the volume is full)"
            ) from None
        raise FetchError(f"cannot unpack {archive.name}: {exc}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise FetchError(f"cannot unpack {archive.name}: {exc}") from None


def _target(into: Path, member: str) -> Path:
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or member.startswith("\\"):
        raise FetchError(f"archive member '{member}' would land outside the model directory")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise FetchError(f"archive member '{member}' has no name")
    return into.joinpath(*parts)


def _copy(source: IO[bytes], target: Path, member: str, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            budget.wrote(member, len(chunk))
            out.write(chunk)


def _extract_tar(archive: Path, into: Path, budget: _Budget) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:  # streamed: headers are read as the archive is
            target = _target(into, member.name)
            budget.entry(member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if member.issym() or member.islnk():
                raise FetchError(f"archive member '{member.name}' is a link; models hold files")
            if not member.isfile():
                raise FetchError(
                    f"archive member '{member.name}' is a device, FIFO or other special file"
                )
            source = tar.extractfile(member)
            if source is None:
                raise FetchError(f"archive member '{member.name}' cannot be read")
            with source:
                _copy(source, target, member.name, budget)


def _extract_zip(archive: Path, into: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            target = _target(into, info.filename)
            budget.entry(info.filename)
            # The high 16 bits are a Unix mode when the archiver wrote one; ZipFile.writestr
            # writes permission bits alone (0o600), no file type: that is a regular file.
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise FetchError(f"archive member '{info.filename}' is a link; models hold files")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise FetchError(
                    f"archive member '{info.filename}' is a device, FIFO or other special file"
                )
            with bundle.open(info) as source:
                _copy(source, target, info.filename, budget)


def replace_directory(staged: Path, destination: Path) -> None:
    """Move the complete ``staged`` directory to ``destination``, replacing what was there
    (a reader sees the old tree or the new one, and at worst briefly none)."""
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        destination.rename(old)
    staged.rename(destination)
    shutil.rmtree(old, ignore_errors=True)
