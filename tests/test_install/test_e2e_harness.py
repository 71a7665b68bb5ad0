"""The real control-plane harness without a control plane: it says how to get one."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from modelplane_testkit import node
from modelplane_testkit.control_plane import control_plane, find_assets

REPO = Path(__file__).resolve().parents[2]


def test_without_binaries_it_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELPLANE_E2E_KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert find_assets() is None
    with pytest.raises(LookupError, match="KUBEBUILDER_ASSETS"), control_plane(tmp_path):
        pass


def test_make_e2e_without_binaries_skips_in_one_line(tmp_path: Path) -> None:
    """What CI would print: one line, and success."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_e2e"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "MODELPLANE_E2E": "1",
            "KUBEBUILDER_ASSETS": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if "control-plane tests not run" in line]
    assert len(lines) == 1, result.stdout
    assert "KUBEBUILDER_ASSETS" in lines[0]
    assert result.returncode == 5, result.stdout  # no test ran; `make e2e` maps 5 to success


def test_make_e2e_node_without_binaries_leaves_every_node_test_out_in_one_line(
    tmp_path: Path,
) -> None:
    """What CI prints for the real-node tests: one line saying how to get a node, and no
    test run (`make e2e-node` maps pytest's 5 to success)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_node"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            node.NODE_ENV: "1",
            "KUBEBUILDER_ASSETS": str(tmp_path),
            node.IMAGES_ENV: str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if "real-node tests not run" in line]
    assert len(lines) == 1, result.stdout
    assert "make images" in lines[0]
    assert result.returncode == 5, result.stdout


def test_the_pause_image_is_an_archive_containerd_can_import(tmp_path: Path) -> None:
    """The sandbox image the node imports: a docker archive whose config names the one
    layer by its digest, tagged as containerd's sandbox_image."""
    pause = tmp_path / "pause"
    pause.write_bytes(b"\x7fELF stand-in for the static pause binary")
    archive = node.pause_image_archive(pause, tmp_path / "pause.tar")
    with tarfile.open(archive) as tar:
        (manifest,) = json.loads(_member(tar, "manifest.json"))
        assert manifest["RepoTags"] == [node.PAUSE_IMAGE]
        config = json.loads(_member(tar, manifest["Config"]))
        (layer_name,) = manifest["Layers"]
        layer = _member(tar, layer_name)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer).hexdigest()}"]
    assert manifest["Config"] == f"{hashlib.sha256(json.dumps(config).encode()).hexdigest()}.json"
    assert config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as rootfs:
        binary = rootfs.getmember("pause")
        assert binary.mode == 0o755
        assert _member(rootfs, "pause") == pause.read_bytes()


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    extracted = tar.extractfile(name)
    assert extracted is not None, name
    return extracted.read()
