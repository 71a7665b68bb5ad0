"""`fetch`: a model URI to a local file, atomically, sha256-verified."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_runtime.errors import FetchError
from modelplane_runtime.fetch import fetch
from modelplane_testkit.file_server import files_served
from modelplane_testkit.runtime_server import run_runtime_cli

PAYLOAD = b"onnx bytes " * 50_000
# Over fsspec's 5 MiB block: fetched by range requests unless streamed.
LARGE = bytes(range(256)) * (48 * 1024)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("served")
    (root / "model.onnx").write_bytes(PAYLOAD)
    (root / "large.onnx").write_bytes(LARGE)

    with files_served(root) as base:
        yield base


GOOD = hashlib.sha256(PAYLOAD).hexdigest()


def test_http_fetch_with_good_sha256(http_root: str, tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.onnx"
    assert fetch(f"{http_root}/model.onnx", target, sha256=GOOD) == GOOD
    assert target.read_bytes() == PAYLOAD


def test_a_file_over_a_block_from_a_server_without_range_requests(
    http_root: str, tmp_path: Path
) -> None:
    """http.server answers a Range header with the whole file (200): a fetch that relies
    on ranges fails there ("doesn't appear to support range requests"); one GET works."""
    target = tmp_path / "large.onnx"
    digest = hashlib.sha256(LARGE).hexdigest()
    assert fetch(f"{http_root}/large.onnx", target, sha256=digest) == digest
    assert target.read_bytes() == LARGE


def test_bad_sha256_writes_nothing(http_root: str, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(FetchError, match=f"has sha256 {GOOD}, not the expected"):
        fetch(f"{http_root}/model.onnx", target, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_a_failed_fetch_keeps_the_previous_file(http_root: str, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(FetchError, match="cannot fetch"):
        fetch(f"{http_root}/missing.onnx", target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_file_uri_and_bad_uris(tmp_path: Path) -> None:
    source = tmp_path / "source.onnx"
    source.write_bytes(PAYLOAD)
    assert fetch(source.as_uri(), tmp_path / "copy.onnx") == GOOD
    with pytest.raises(FetchError, match="scheme must be one of"):
        fetch("ftp://host/model.onnx", tmp_path / "x.onnx")
    with pytest.raises(FetchError, match="64 lowercase hex"):
        fetch(source.as_uri(), tmp_path / "y.onnx", sha256="abc")


def test_fetch_command_line(http_root: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_runtime_cli("fetch", *args)

    good = run(f"{http_root}/model.onnx", str(tmp_path / "a.onnx"), "--sha256", GOOD)
    assert good.returncode == 0, good.stderr
    assert GOOD in good.stdout
    bad = run(f"{http_root}/model.onnx", str(tmp_path / "b.onnx"), "--sha256", "f" * 64)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert "not the expected" in bad.stderr
    assert not (tmp_path / "b.onnx").exists()
