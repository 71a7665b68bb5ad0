"""The shared model cache through the real `fetch` command over local HTTP: a hit
downloads nothing, a miss fills it, a corrupted entry is fetched again, pods that start
together download once, a changed model is never served stale, and a cache that cannot
take the model (full, over its size limit) never stops the pod from starting."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from modelplane_runtime.model_cache import FILES, LOCKS
from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import run_runtime_cli

WEIGHTS = "weights.bin"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Origin:
    """A local HTTP server over a folder that counts the GETs of each path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets: Counter[str] = Counter()
        origin = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                origin.gets[self.path] += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    root = tmp_path_factory.mktemp("origin")
    single = onnx_models.matmul_chain(root / "chain.onnx", width=64, layers=4)
    folder = root / "tree"
    folder.mkdir()
    onnx.save_model(
        onnx.load(str(single)),
        str(folder / "chain.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS,
        size_threshold=0,
    )
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        for name in ("chain.onnx", WEIGHTS):
            tar.add(folder / name, arcname=name)
    served = Origin(root)
    served.thread.start()
    yield served
    served.server.shutdown()
    served.thread.join(timeout=10)
    served.server.server_close()


def _fetch(
    origin: Origin, name: str, destination: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    digest = _sha256(origin.root / name)
    return run_runtime_cli(
        "fetch", f"{origin.url}/{name}", str(destination), "--sha256", digest,
        "--cache", str(cache), *extra,
    )  # fmt: skip


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_a_miss_fills_the_cache_and_a_hit_downloads_nothing(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = origin.gets["/chain.onnx"]
    first = _fetch(origin, "chain.onnx", tmp_path / "pod-1" / "model.onnx", cache)
    assert first.returncode == 0, first.stderr
    assert "cache miss" in first.stdout
    assert origin.gets["/chain.onnx"] == before + 1
    second = _fetch(origin, "chain.onnx", tmp_path / "pod-2" / "model.onnx", cache)
    assert second.returncode == 0, second.stderr
    assert "cache hit" in second.stdout
    assert origin.gets["/chain.onnx"] == before + 1  # nothing downloaded
    original = (origin.root / "chain.onnx").read_bytes()
    assert (tmp_path / "pod-2" / "model.onnx").read_bytes() == original
    assert _entries(cache) == [_sha256(origin.root / "chain.onnx")]
    assert not [p for p in cache.iterdir() if p.name.startswith((".staging", ".trash"))]


def test_an_archive_with_external_weights_is_cached_as_its_tree(
    origin: Origin, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    for pod in ("pod-1", "pod-2"):
        done = _fetch(origin, "model.tar.gz", tmp_path / pod / "model", cache)
        assert done.returncode == 0, done.stderr
    assert "cache hit" in done.stdout
    for name in ("chain.onnx", WEIGHTS):
        fetched = (tmp_path / "pod-2" / "model" / name).read_bytes()
        assert fetched == (origin.root / "tree" / name).read_bytes()


def test_a_corrupted_entry_is_fetched_again_never_served(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _fetch(origin, "model.tar.gz", tmp_path / "pod-1" / "model", cache).returncode == 0
    (entry,) = _entries(cache)
    weights = next((cache / entry).rglob(WEIGHTS))
    damaged = bytearray(weights.read_bytes())
    damaged[100] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    before = origin.gets["/model.tar.gz"]
    again = _fetch(origin, "model.tar.gz", tmp_path / "pod-2" / "model", cache)
    assert again.returncode == 0, again.stderr
    assert "cache refilled" in again.stdout
    assert "is corrupt" in again.stderr
    assert origin.gets["/model.tar.gz"] == before + 1
    fetched = (tmp_path / "pod-2" / "model" / WEIGHTS).read_bytes()
    assert fetched == (origin.root / "tree" / WEIGHTS).read_bytes()
    # A file added to an entry is corruption too.
    (cache / entry / "tree" / "extra.bin").write_bytes(b"x")
    third = _fetch(origin, "model.tar.gz", tmp_path / "pod-3" / "model", cache)
    assert "cache refilled" in third.stdout
    assert not (tmp_path / "pod-3" / "model" / "extra.bin").exists()


def test_pods_that_start_together_download_once(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = origin.gets["/model.tar.gz"]
    with ThreadPoolExecutor(4) as pool:
        runs = list(
            pool.map(
                lambda pod: _fetch(origin, "model.tar.gz", tmp_path / pod / "model", cache),
                [f"pod-{i}" for i in range(4)],
            )
        )
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert origin.gets["/model.tar.gz"] == before + 1
    assert sorted(r.stdout.rsplit("cache ", 1)[1].strip(" )\n") for r in runs) == [
        "hit", "hit", "hit", "miss"
    ]  # fmt: skip
    for i in range(4):
        assert (tmp_path / f"pod-{i}" / "model" / WEIGHTS).is_file()
    assert len(_entries(cache)) == 1


def test_a_changed_model_is_a_different_entry_never_the_old_one(
    origin: Origin, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert _fetch(origin, "chain.onnx", tmp_path / "a" / "model.onnx", cache).returncode == 0
    # The same URI, new content (a re-published model): its digest is new, so is its entry.
    changed = origin.root / "changed.onnx"
    onnx_models.matmul_chain(changed, width=32, layers=2)
    moved = origin.root / "chain-v2.onnx"
    shutil.copyfile(changed, moved)
    run = _fetch(origin, "chain-v2.onnx", tmp_path / "b" / "model.onnx", cache)
    assert "cache miss" in run.stdout
    assert (tmp_path / "b" / "model.onnx").read_bytes() == changed.read_bytes()
    assert len(_entries(cache)) == 2


def test_over_the_size_limit_the_least_recently_used_go(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    small = _sha256(origin.root / "chain.onnx")
    assert _fetch(origin, "chain.onnx", tmp_path / "a" / "model.onnx", cache).returncode == 0
    size = (origin.root / "chain.onnx").stat().st_size
    limit = str(size + 10_000 + (origin.root / "model.tar.gz").stat().st_size * 4)
    run = _fetch(origin, "model.tar.gz", tmp_path / "b" / "m", cache, "--cache-max-bytes", limit)
    assert run.returncode == 0, run.stderr
    tree_entry = _sha256(origin.root / "model.tar.gz")
    tree_size = sum(p.stat().st_size for p in (cache / tree_entry).rglob("*") if p.is_file())
    tight = str(tree_size + 1)
    # Room for the newest only: the older, unused entry is evicted.
    again = _fetch(origin, "model.tar.gz", tmp_path / "c" / "m", cache, "--cache-max-bytes", tight)
    assert "cache hit" in again.stdout
    assert _entries(cache) == [tree_entry]
    assert "evicted " + small in again.stderr


def test_a_model_over_the_size_limit_is_fetched_without_the_cache(
    origin: Origin, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run = _fetch(
        origin, "chain.onnx", tmp_path / "a" / "model.onnx", cache, "--cache-max-bytes", "10"
    )
    assert run.returncode == 0, run.stderr
    assert "cache bypassed" in run.stdout
    assert "over the cache's size limit" in run.stderr
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (origin.root / "chain.onnx").read_bytes()
    assert _entries(cache) == []


def _in_a_small_tmpfs(cache: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` with ``cache`` a 64 KiB tmpfs, in a user and mount namespace of its own
    (no privilege needed, nothing mounted outside it)."""
    script = f'mount -t tmpfs -o size=64k tmpfs "{cache}" && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_full_cache_volume_is_bypassed(origin: Origin, tmp_path: Path) -> None:
    """A real ENOSPC, from a cache volume smaller than the model."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if shutil.which("unshare") is None or _in_a_small_tmpfs(cache, "true").returncode != 0:
        pytest.skip("no unprivileged tmpfs mount here (unshare --user --mount)")
    digest = _sha256(origin.root / "model.tar.gz")
    destination = tmp_path / "pod" / "model"
    run = _in_a_small_tmpfs(
        cache, sys.executable, "-m", "modelplane_runtime", "fetch",
        f"{origin.url}/model.tar.gz", str(destination), "--sha256", digest, "--cache", str(cache),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "cache bypassed" in run.stdout
    assert "has no room" in run.stderr
    assert (destination / WEIGHTS).read_bytes() == (origin.root / "tree" / WEIGHTS).read_bytes()


def test_the_cache_needs_the_models_digest(origin: Origin, tmp_path: Path) -> None:
    run = run_runtime_cli(
        "fetch", f"{origin.url}/chain.onnx", str(tmp_path / "m.onnx"), "--cache", str(tmp_path)
    )
    assert run.returncode == 2
    assert "--cache needs --sha256" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_entry_lists_every_file_with_its_digest(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _fetch(origin, "model.tar.gz", tmp_path / "a" / "m", cache).returncode == 0
    (entry,) = _entries(cache)
    listed = (cache / entry / FILES).read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in listed) == ["tree/chain.onnx", f"tree/{WEIGHTS}"]
    assert (cache / LOCKS / entry).exists()
