"""What a fetch may write is bounded, and its refusals are one line: the real `fetch`
command as a subprocess, on archives built here, over file:// URIs."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelplane_testkit.runtime_server import run_runtime_cli


def _gzip_of_zeros(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_zip_from_writestr_is_a_zip_of_files(tmp_path: Path) -> None:
    """ZipFile.writestr(name, data) records permission bits (0o600) and no file type:
    a regular file, not a special one."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("model.onnx", b"graph")
        bundle.writestr("weights/", b"")
        bundle.writestr("weights/a.bin", b"weights")
    assert zipfile.ZipFile(archive).getinfo("model.onnx").external_attr >> 16 == 0o600
    done = run_runtime_cli("fetch", archive.as_uri(), str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "weights" / "a.bin").read_bytes() == b"weights"


def test_directories_count_towards_the_entry_cap(tmp_path: Path) -> None:
    archive = tmp_path / "dirs.tar"
    with tarfile.open(archive, "w") as tar:
        for number in range(5):
            info = tarfile.TarInfo(f"d{number}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    refused = run_runtime_cli("fetch", archive.as_uri(), str(tmp_path / "m"), "--max-files", "3")
    assert refused.returncode == 1
    assert "more than 3 files and directories (at 'd3')" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_an_archive_over_the_compression_ratio_is_refused(tmp_path: Path) -> None:
    """64 MiB of zeros gzip to about 64 KiB: a ratio near 1000, under every byte cap."""
    archive = _gzip_of_zeros(tmp_path / "bomb.tar.gz", 64 << 20)
    refused = run_runtime_cli("fetch", archive.as_uri(), str(tmp_path / "m"))
    assert refused.returncode == 1
    assert "over the cap on its compression ratio" in refused.stderr
    assert not (tmp_path / "m").exists()
    allowed = run_runtime_cli("fetch", archive.as_uri(), str(tmp_path / "m"), "--max-ratio", "2000")
    assert allowed.returncode == 0, allowed.stderr


def test_the_byte_cap_bounds_a_single_file_and_an_archive_with_its_contents(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(100_000))
    refused = run_runtime_cli(
        "fetch", model.as_uri(), str(tmp_path / "out.onnx"), "--max-bytes", "99999"
    )
    assert refused.returncode == 1
    assert "larger than the cap of 99999 bytes" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    fits = run_runtime_cli(
        "fetch",
        model.as_uri(),
        str(tmp_path / "out.onnx"),
        "--max-bytes",
        "100000",
        "--sha256",
        digest,
    )
    assert fits.returncode == 0, fits.stderr

    # The archive and what it unpacks to are on the volume at once: both count.
    archive = tmp_path / "model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(model, arcname="model.onnx")
    size = archive.stat().st_size
    over = run_runtime_cli(
        "fetch", archive.as_uri(), str(tmp_path / "tree"), "--max-bytes", str(size + 99_999)
    )
    assert over.returncode == 1
    assert "archive unpacks to more than 99999 bytes" in over.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_destination_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"graph")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for target in (locked / "model.onnx", locked / "tree" / "model.onnx"):
        refused = run_runtime_cli("fetch", model.as_uri(), str(target))
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: cannot fetch")
        assert "Permission denied" in refused.stderr
        assert refused.stderr.count("\n") == 1


def test_a_temporary_file_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """Whoever runs it (root too): /proc takes no new files."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"graph")
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("model.onnx", b"graph")
    for uri, target in ((model.as_uri(), "/proc/model.onnx"), (archive.as_uri(), "/proc/m")):
        refused = run_runtime_cli("fetch", uri, target)
        assert refused.returncode == 1, refused.stderr
        assert "Traceback" not in refused.stderr
        assert refused.stderr.startswith("error: cannot fetch")
        assert refused.stderr.count("\n") == 1
