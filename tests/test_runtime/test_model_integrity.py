"""What is served is what was verified: through the real CLI, real files and real HTTP.

A graph's external data must lie inside its directory (no absolute path, no ``..``, no
link out), checked before onnxruntime opens anything; a directory read in place serves
only files its SHA256SUMS lists; with copyToPod it is copied, verified, and later writes
to the volume change nothing; ``serve -f`` of an archive with its sha256 serves it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from modelplane_api import facts
from modelplane_testkit import onnx_models
from modelplane_testkit.file_server import files_served
from modelplane_testkit.runtime_server import RuntimeServer, run_runtime_cli

WIDTH = 4


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _graph_reading(path: Path, location: str) -> Path:
    """y = x @ W, W's 64 bytes read from ``location`` (relative to the graph's folder)."""
    weights = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [weights],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", onnx_models.OPSET)],
        ir_version=onnx_models.IR_VERSION,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _weights(path: Path, scale: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.eye(WIDTH, dtype=np.float32) * scale).tofile(path)
    return path


def _manifest(folder: Path, *names: str) -> str:
    (folder / facts.MANIFEST_FILE).write_text(
        "".join(f"{_sha256(folder / n)}  {n}\n" for n in names)
    )
    return _sha256(folder / facts.MANIFEST_FILE)


def _deployment(tmp_path: Path, uri: str, sha256: str, name: str = "m", **model: object) -> Path:
    spec = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "models"},
        "spec": {"model": {"uri": uri, "sha256": sha256, **model}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def _refused(*args: str, env: dict[str, str] | None = None) -> str:
    """``serve ARGS`` must exit 1 before serving, saying why in one line."""
    run = run_runtime_cli("serve", *args, "--port", "1", timeout=90, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run.stderr


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside/w.bin", "leaves the model directory"),
        ("sub/../../outside/w.bin", "leaves the model directory"),
        ("ABSOLUTE", "is an absolute path"),
        ("link.bin", "is a link out of the model directory"),
    ],
)
def test_external_data_outside_the_model_directory_is_refused_before_loading(
    tmp_path: Path, location: str, message: str
) -> None:
    """The runtime's own check, whatever onnxruntime release the image has (1.24 was the
    first to refuse these), for a graph alone and a directory alike."""
    secret = _weights(tmp_path / "outside" / "w.bin")
    if location == "ABSOLUTE":
        location = str(secret)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    graph = _graph_reading(folder / "m.onnx", location)
    assert message in _refused("--model", str(graph))
    assert message in _refused("--model", str(folder))


def test_a_graph_reading_weights_beside_it_is_served(tmp_path: Path, logs: Path) -> None:
    """The check refuses only what leaves the directory (here a weights file in a subfolder)."""
    _weights(tmp_path / "model" / "sub" / "w.bin", scale=3.0)
    graph = _graph_reading(tmp_path / "model" / "m.onnx", "./sub/w.bin")
    with RuntimeServer(["--model", str(graph)], log_dir=logs) as server:
        body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                            "data": [1.0, 2.0, 3.0, 4.0]}]}  # fmt: skip
        answer = server.post("/v2/models/m/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.0, 6.0, 9.0, 12.0]


def test_a_directory_read_in_place_refuses_weights_its_manifest_does_not_list(
    tmp_path: Path, logs: Path
) -> None:
    """file:// and pvc:// directories: only the files SHA256SUMS lists are verified, so a
    graph that reads another one (swappable on the volume at will) is refused."""
    folder = tmp_path / "model"
    _weights(folder / "w.bin")
    _weights(folder / "unlisted.bin", scale=7.0)
    _graph_reading(folder / "m.onnx", "w.bin")
    good = _manifest(folder, "m.onnx", "w.bin")
    with RuntimeServer(["-f", str(_deployment(tmp_path, f"file://{folder}/", good))], log_dir=logs):
        pass  # lists what the graph reads: it loads

    _graph_reading(folder / "m.onnx", "unlisted.bin")
    listed_without = _manifest(folder, "m.onnx", "w.bin")
    stderr = _refused("-f", str(_deployment(tmp_path, f"file://{folder}/", listed_without)))
    assert "reads external data from unlisted.bin, which SHA256SUMS does not list" in stderr


def test_a_single_graph_with_a_digest_must_not_read_unverified_weights(tmp_path: Path) -> None:
    """A file:// graph's sha256 covers the graph, not the weights beside it."""
    _weights(tmp_path / "model" / "w.bin")
    graph = _graph_reading(tmp_path / "model" / "m.onnx", "w.bin")
    stderr = _refused("-f", str(_deployment(tmp_path, f"file://{graph}", _sha256(graph))))
    assert "reads external data that its sha256 does not cover" in stderr


def _infer(server: RuntimeServer) -> list[float]:
    body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                        "data": [1.0, 2.0, 3.0, 4.0]}]}  # fmt: skip
    answer = server.post("/v2/models/m/infer", json=body)
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def test_a_model_copied_into_the_pod_is_verified_and_never_follows_the_volume(
    tmp_path: Path, logs: Path
) -> None:
    """copyToPod: the directory is copied (verified through its manifest) into storage of
    the pod's own before loading, so writing the volume afterwards changes nothing served;
    a source that no longer matches its manifest is refused at the copy."""
    folder = tmp_path / "volume" / "model"
    _weights(folder / "w.bin")
    _graph_reading(folder / "m.onnx", "w.bin")
    digest = _manifest(folder, "m.onnx", "w.bin")
    manifest = _deployment(tmp_path, f"file://{folder}/", digest, copyToPod=True)
    home = {"HOME": str(tmp_path / "home")}
    with RuntimeServer(["-f", str(manifest)], env=home, log_dir=logs) as server:
        assert _infer(server) == [1.0, 2.0, 3.0, 4.0]
        with (folder / "w.bin").open("r+b") as weights:  # in place, as a writer of the volume
            weights.write((np.eye(WIDTH, dtype=np.float32) * 5).tobytes())
        assert _infer(server) == [1.0, 2.0, 3.0, 4.0]
        loaded = next(line for line in server.log().splitlines() if "loaded m from" in line)
        assert str(tmp_path / "home") in loaded
        assert str(folder) not in loaded
    stderr = _refused("-f", str(manifest), env=home)
    assert "w.bin has sha256" in stderr
    assert "as SHA256SUMS says" in stderr


@pytest.fixture
def archive_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder with model.tar.gz: a graph with external weights."""
    root = tmp_path / "origin"
    root.mkdir()
    single = onnx_models.matmul_chain(tmp_path / "chain.onnx", width=16, layers=2)
    tree = tmp_path / "tree"
    tree.mkdir()
    onnx.save_model(
        onnx.load(str(single)),
        str(tree / "chain.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        for name in ("chain.onnx", "weights.bin"):
            tar.add(tree / name, arcname=name)

    with files_served(root) as base:
        yield base, tmp_path


def test_serve_f_of_an_archive_with_its_digest_serves_it(
    archive_origin: tuple[str, Path], tmp_path: Path, logs: Path
) -> None:
    """The archive is verified by its own digest as it is fetched; the unpacked tree has
    no manifest to check again, as in a pod."""
    base, work = archive_origin
    digest = _sha256(work / "origin" / "model.tar.gz")
    manifest = _deployment(tmp_path, f"{base}/model.tar.gz", digest, name="chain")
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(work / "chain.onnx")).run(None, {"x": x})[0]
    home = {"HOME": str(tmp_path / "home")}  # the local fetch cache lives under it
    with RuntimeServer(["-f", str(manifest)], env=home, log_dir=logs) as server:
        body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.tolist()}]}
        answer = server.post("/v2/models/chain/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    # A wrong digest is refused, and never served from what the right one fetched.
    wrong = _deployment(tmp_path, f"{base}/model.tar.gz", "0" * 64, name="chain")
    run = run_runtime_cli("serve", "-f", str(wrong), "--port", "1", env=home, timeout=90)
    assert run.returncode == 1
    assert "not the expected" in run.stderr
