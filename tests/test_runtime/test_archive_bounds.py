"""What a fetch may write is bounded, and its refusals are one line: the real `fetch`
command as a subprocess, on archives built here, over file:// URIs."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_api import facts
from modelplane_api.spec import parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children
from modelplane_testkit.file_server import files_served
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


def _rendered_fetch(uri: str, size_limit: str, volume: Path) -> list[str]:
    """The fetch command the operator renders for ``uri`` under a model volume of
    ``size_limit``, with the volume's path moved to ``volume``."""
    md = parse_model_deployment(
        {
            "apiVersion": "modelplane.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "demo", "namespace": "models"},
            "spec": {"model": {"uri": uri}},
        }
    )
    config = OperatorConfig(model_volume_size_limit=size_limit)
    deployment = next(o for o in render_children(md, config) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "model", "emptyDir": {"sizeLimit": size_limit}} in pod["volumes"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"][: len(facts.RUNTIME_COMMAND)] == list(facts.RUNTIME_COMMAND)
    return [a.replace(facts.MODEL_DIR, str(volume)) for a in fetch["command"][3:]]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder (a fetched model must come from somewhere)."""
    root = tmp_path / "served"
    root.mkdir()
    with files_served(root) as base:
        yield base, root


def test_the_rendered_fetch_stops_at_the_model_volumes_size(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """An archive that unpacks past the emptyDir's sizeLimit fails the fetch with a message
    (the kubelet would otherwise evict the pod with none), through the command the
    operator renders; under the limit the same command fetches."""
    base, root = served
    with tarfile.open(root / "model.tar", "w") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = 3 << 20  # random: no compression ratio to trip over
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    volume = tmp_path / "volume"
    refused = run_runtime_cli(*_rendered_fetch(f"{base}/model.tar", "4Mi", volume))
    assert refused.returncode == 1
    assert "archive unpacks to more than" in refused.stderr
    assert "sizeLimit" in refused.stderr
    assert not (volume / facts.FETCHED_MODEL_DIR).exists()
    fits = run_runtime_cli(*_rendered_fetch(f"{base}/model.tar", "8Mi", volume))
    assert fits.returncode == 0, fits.stderr
    assert (volume / facts.FETCHED_MODEL_DIR / "weights.bin").stat().st_size == 3 << 20
