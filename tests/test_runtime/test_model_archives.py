"""Models that are directories: a graph with external weights, fetched as an archive or
as a directory with a SHA256SUMS manifest over local HTTP, unpacked without trusting
the archive, and served; compared with onnxruntime on the original files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelplane_api import facts
from modelplane_runtime import fetch as fetch_module
from modelplane_runtime.errors import FetchError
from modelplane_runtime.fetch import fetch_tree
from modelplane_testkit import onnx_models
from modelplane_testkit.file_server import files_served
from modelplane_testkit.runtime_server import RuntimeServer, run_runtime_cli

WEIGHTS = "weights.bin"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chain.onnx with its weights in weights.bin beside it (as every model over 2 GB is)."""
    work = tmp_path_factory.mktemp("external")
    single = onnx_models.matmul_chain(work / "single.onnx", width=64, layers=4)
    folder = work / "model"
    folder.mkdir()
    model = onnx.load(str(single))
    onnx.save_model(
        model,
        str(folder / "chain.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS,
        size_threshold=0,
    )
    assert (folder / WEIGHTS).stat().st_size > 60_000  # the weights really are outside
    assert (folder / "chain.onnx").stat().st_size < 10_000
    manifest = "".join(f"{_sha256(folder / n)}  {n}\n" for n in ("chain.onnx", WEIGHTS))
    (folder / facts.MANIFEST_FILE).write_text(manifest)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder holding the model directory and archives of it."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(model_dir, root / "model")
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        for name in ("chain.onnx", WEIGHTS):
            tar.add(model_dir / name, arcname=f"model/{name}")
    with zipfile.ZipFile(root / "model.zip", "w") as bundle:
        for name in ("chain.onnx", WEIGHTS):
            bundle.write(model_dir / name, arcname=name)

    with files_served(root) as base:
        yield base, root


def _same_files(fetched: Path, original: Path) -> None:
    for name in ("chain.onnx", WEIGHTS):
        found = next(fetched.rglob(name))
        assert found.read_bytes() == (original / name).read_bytes()


def test_an_archive_over_http_is_fetched_unpacked_and_served(
    served: tuple[str, Path], model_dir: Path, tmp_path: Path, logs: Path
) -> None:
    base, root = served
    target = tmp_path / "models"
    digest = _sha256(root / "model.tar.gz")
    assert fetch_tree(f"{base}/model.tar.gz", target, sha256=digest) == digest
    _same_files(target, model_dir)

    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    expected = ort.InferenceSession(str(model_dir / "chain.onnx")).run(None, {"x": x})[0]
    with RuntimeServer(["--model", str(target), "--name", "chain"], log_dir=logs) as server:
        body = {"inputs": [{"name": "x", "shape": [3, 64], "datatype": "FP32", "data": x.tolist()}]}
        answer = server.post("/v2/models/chain/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(
            expected.shape
        )
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_a_zip_and_a_directory_with_its_manifest(
    served: tuple[str, Path], model_dir: Path, tmp_path: Path
) -> None:
    base, root = served
    fetch_tree(f"{base}/model.zip", tmp_path / "from-zip", sha256=_sha256(root / "model.zip"))
    _same_files(tmp_path / "from-zip", model_dir)
    manifest = _sha256(root / "model" / facts.MANIFEST_FILE)
    fetch_tree(f"{base}/model/", tmp_path / "from-dir", sha256=manifest)
    _same_files(tmp_path / "from-dir", model_dir)
    assert sorted(p.name for p in (tmp_path / "from-dir").iterdir()) == ["chain.onnx", WEIGHTS]


def test_an_http_directory_needs_its_manifest(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    with pytest.raises(FetchError, match="cannot be listed; give the sha256 of its SHA256SUMS"):
        fetch_tree(f"{base}/model/", tmp_path / "x")


def _leaves_nothing(parent: Path, destination: Path) -> None:
    assert not destination.exists()
    assert list(parent.iterdir()) == [], "staging files left behind"


def test_a_digest_mismatch_fails_and_leaves_the_old_model(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    target = tmp_path / "models" / "m"
    with pytest.raises(FetchError, match="not the expected"):
        fetch_tree(f"{base}/model.tar.gz", target, sha256="0" * 64)
    _leaves_nothing(tmp_path / "models", target)

    # A directory whose manifest is right but one file is not what it lists.
    tampered = root / "tampered"
    shutil.copytree(root / "model", tampered)
    weights = bytearray((tampered / WEIGHTS).read_bytes())
    weights[100] ^= 1
    (tampered / WEIGHTS).write_bytes(bytes(weights))
    target.mkdir(parents=True)
    (target / "previous.onnx").write_text("the model served until now")
    with pytest.raises(FetchError, match=f"{WEIGHTS} has sha256 .* not .* as SHA256SUMS says"):
        fetch_tree(f"{base}/tampered/", target, sha256=_sha256(tampered / facts.MANIFEST_FILE))
    assert [p.name for p in target.iterdir()] == ["previous.onnx"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _zip(path: Path, name: str, data: bytes, mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        bundle.writestr(info, data)
    return path


def _bomb(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = 64 * 1024 * 1024  # 64 MiB of zeros: about 64 KiB compressed
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert path.stat().st_size < 1024 * 1024
    return path


MALICIOUS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "traversal": (
        lambda p: _tar(p / "a.tar", (_info("../evil.onnx"), b"x")),
        "outside the model directory",
    ),
    "absolute": (
        lambda p: _tar(p / "a.tar", (_info("/tmp/evil.onnx"), b"x")),
        "outside the model directory",
    ),
    "symlink": (
        lambda p: _tar(p / "a.tar", (_info("m.onnx", tarfile.SYMTYPE, "/etc/passwd"), None)),
        "is a link",
    ),
    "hardlink": (
        lambda p: _tar(p / "a.tar", (_info("m.onnx", tarfile.LNKTYPE, "/etc/passwd"), None)),
        "is a link",
    ),
    "device": (lambda p: _tar(p / "a.tar", (_info("null", tarfile.CHRTYPE), None)), "device, FIFO"),
    "fifo": (lambda p: _tar(p / "a.tar", (_info("pipe", tarfile.FIFOTYPE), None)), "device, FIFO"),
    "zip-traversal": (
        lambda p: _zip(p / "a.zip", "../../evil.onnx", b"x"),
        "outside the model directory",
    ),
    "zip-symlink": (
        lambda p: _zip(p / "a.zip", "m.onnx", b"/etc/passwd", stat.S_IFLNK | 0o777),
        "is a link",
    ),
    "bomb": (
        lambda p: _bomb(p / "a.tar.gz"),
        r"archive unpacks to more than \d+ bytes \(at .weights.bin.\); raise the cap",
    ),
    "many-files": (
        lambda p: _tar(p / "a.tar", *((_info(f"f{i}"), b"x") for i in range(5))),
        "more than 3 files",
    ),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_archives_are_refused_and_leave_nothing(tmp_path: Path, case: str) -> None:
    make, message = MALICIOUS[case]
    source = tmp_path / "source"
    source.mkdir()
    archive = make(source)
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises(FetchError, match=message):
        fetch_tree(archive.as_uri(), parent / "m", max_bytes=10 * 1024 * 1024, max_files=3)
    _leaves_nothing(parent, parent / "m")
    assert not (tmp_path / "evil.onnx").exists()


def test_the_fetch_command_takes_archives_and_says_what_it_refused(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    ok = run_runtime_cli(
        "fetch", f"{base}/model.zip", str(tmp_path / "m"), "--sha256", _sha256(root / "model.zip")
    )
    assert ok.returncode == 0, ok.stderr
    assert "fetched" in ok.stdout
    bad = run_runtime_cli("fetch", f"{base}/model.zip", str(tmp_path / "n"), "--sha256", "0" * 64)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert "not the expected" in bad.stderr


def test_a_directory_with_several_graphs_needs_one_named(
    model_dir: Path, tmp_path: Path, logs: Path
) -> None:
    folder = tmp_path / "two"
    shutil.copytree(model_dir, folder)
    shutil.copy(folder / "chain.onnx", folder / "other.onnx")
    refused = run_runtime_cli("serve", "--model", str(folder), "--port", "1", timeout=60)
    assert refused.returncode == 1
    assert "several .onnx files (chain.onnx, other.onnx)" in refused.stderr
    with RuntimeServer(["--model", str(folder), "--graph", "other.onnx"], log_dir=logs) as server:
        assert server.get("/v2/models/two").json()["inputs"][0]["name"] == "x"


def test_the_fetch_logs_its_progress(
    served: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, root = served
    monkeypatch.setattr(fetch_module._Progress, "EVERY_SECONDS", 0.0)  # every chunk, not every 5 s
    with caplog.at_level(logging.INFO, logger="modelplane.fetch"):
        fetch_tree(f"{base}/model.zip", tmp_path / "m", sha256=_sha256(root / "model.zip"))
    size = (root / "model.zip").stat().st_size / 2**20
    assert any(
        f"fetching {base}/model.zip: {size:.1f} MiB of {size:.1f} MiB (" in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]


def _manifest_serving(model_dir: Path, tmp_path: Path, sha256: str) -> Path:
    spec = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chain", "namespace": "models"},
        "spec": {"model": {"uri": f"file://{model_dir}/", "sha256": sha256}},
    }
    path = tmp_path / "chain.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_a_directory_read_in_place_is_verified_through_its_manifest(
    model_dir: Path, tmp_path: Path, logs: Path
) -> None:
    """file:// and pvc:// directories are not fetched: the runtime checks them itself."""
    good = _sha256(model_dir / facts.MANIFEST_FILE)
    with RuntimeServer(["-f", str(_manifest_serving(model_dir, tmp_path, good))], log_dir=logs):
        pass  # became live, so it loaded

    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    weights = bytearray((tampered / WEIGHTS).read_bytes())
    weights[10] ^= 0xFF
    (tampered / WEIGHTS).write_bytes(bytes(weights))
    run = run_runtime_cli("serve", "-f", str(_manifest_serving(tampered, tmp_path, good)))
    assert run.returncode == 1
    assert f"{WEIGHTS} does not have the sha256 SHA256SUMS gives" in run.stderr

    wrong = run_runtime_cli("serve", "-f", str(_manifest_serving(model_dir, tmp_path, "0" * 64)))
    assert wrong.returncode == 1
    assert "SHA256SUMS does not have the expected sha256" in wrong.stderr
