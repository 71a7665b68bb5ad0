"""The shared model cache through the real `fetch` command over local HTTP: a hit
downloads nothing, a miss fills it, a corrupted entry is fetched again, pods that start
together download once, a changed model is never served stale, and a cache that cannot
take the model (full, over its size limit) never stops the pod from starting. An entry is
proven by the digest that names it, whatever else was written on the volume, and what a
killed fetch left behind is removed by the next one."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from modelplane_api import facts
from modelplane_runtime.model_cache import LOCKS, STAGING, TREE
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
        self.release = threading.Event()  # what /stall/ waits for before it goes on
        origin = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                origin.gets[self.path] += 1
                if self.path.startswith("/stall/"):
                    self._stall(root / self.path.removeprefix("/stall/"))
                    return
                super().do_GET()

            def _stall(self, path: Path) -> None:
                """Half the file, then nothing (a download a fetch is killed in)."""
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                origin.release.wait(timeout=60)

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
    manifest = "".join(f"{_sha256(folder / n)}  {n}\n" for n in ("chain.onnx", WEIGHTS))
    (folder / facts.MANIFEST_FILE).write_text(manifest)
    served = Origin(root)
    served.thread.start()
    yield served
    served.release.set()
    served.server.shutdown()
    served.thread.join(timeout=10)
    served.server.server_close()


def _digest(origin: Origin, name: str) -> str:
    """The model's sha256: a file's or an archive's own, a directory's manifest's."""
    if name.endswith("/"):
        return _sha256(origin.root / name / facts.MANIFEST_FILE)
    return _sha256(origin.root / name)


def _fetch(
    origin: Origin, name: str, destination: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    digest = _digest(origin, name)
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
    assert _fetch(origin, "tree/", tmp_path / "pod-1" / "model", cache).returncode == 0
    (entry,) = _entries(cache)
    weights = next((cache / entry).rglob(WEIGHTS))
    damaged = bytearray(weights.read_bytes())
    damaged[100] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    before = origin.gets[f"/tree/{WEIGHTS}"]
    again = _fetch(origin, "tree/", tmp_path / "pod-2" / "model", cache)
    assert again.returncode == 0, again.stderr
    assert "cache refilled" in again.stdout
    assert "is corrupt" in again.stderr
    assert origin.gets[f"/tree/{WEIGHTS}"] == before + 1
    fetched = (tmp_path / "pod-2" / "model" / WEIGHTS).read_bytes()
    assert fetched == (origin.root / "tree" / WEIGHTS).read_bytes()
    # A file added to an entry is corruption too.
    (cache / entry / TREE / "extra.bin").write_bytes(b"x")
    third = _fetch(origin, "tree/", tmp_path / "pod-3" / "model", cache)
    assert "cache refilled" in third.stdout
    assert not (tmp_path / "pod-3" / "model" / "extra.bin").exists()


def _forge(entry: Path) -> None:
    """What anyone who can write the cache volume can do: change the model's bytes, then
    rewrite every list of digests the entry holds to match."""
    listings = {".files", facts.MANIFEST_FILE}
    for path in sorted(entry.rglob("*")):
        if path.is_file() and path.name not in listings:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
    for listing in (p for p in entry.rglob("*") if p.name in listings):
        names = [line.split("  ", 1)[1] for line in listing.read_text().splitlines()]
        listing.write_text("".join(f"{_sha256(listing.parent / n)}  {n}\n" for n in names))


@pytest.mark.parametrize("name", ["chain.onnx", "model.tar.gz", "tree/"])
def test_an_entry_is_proven_by_its_digest_not_by_its_own_lists(
    origin: Origin, tmp_path: Path, name: str
) -> None:
    """A hit is anchored to the sha256 that names the entry: a file's digest, or a tree's
    manifest with that digest. A forged entry is fetched again, never served, and the
    fetch never reports the pinned digest for bytes that do not have it."""
    cache = tmp_path / "cache"
    target = "model.onnx" if name == "chain.onnx" else "model"
    assert _fetch(origin, name, tmp_path / "pod-1" / target, cache).returncode == 0
    (entry,) = _entries(cache)
    _forge(cache / entry)
    again = _fetch(origin, name, tmp_path / "pod-2" / target, cache)
    assert again.returncode == 0, again.stderr
    assert "cache refilled" in again.stdout, again.stderr
    published = origin.root / ("tree" if name != "chain.onnx" else "")
    for file in ("chain.onnx",) if name == "chain.onnx" else ("chain.onnx", WEIGHTS):
        got = tmp_path / "pod-2" / target
        got = got if name == "chain.onnx" else got / file
        assert got.read_bytes() == (published / file).read_bytes(), file
    hit = _fetch(origin, name, tmp_path / "pod-3" / target, cache)
    assert "cache hit" in hit.stdout  # the refilled entry is good again


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
    digest = _digest(origin, "tree/")  # its weights alone are over 64 KiB
    destination = tmp_path / "pod" / "model"
    run = _in_a_small_tmpfs(
        cache, sys.executable, "-m", "modelplane_runtime", "fetch",
        f"{origin.url}/tree/", str(destination), "--sha256", digest, "--cache", str(cache),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "cache bypassed" in run.stdout
    assert "has no room" in run.stderr
    assert (destination / WEIGHTS).read_bytes() == (origin.root / "tree" / WEIGHTS).read_bytes()
    assert sorted(p.name for p in destination.iterdir()) == ["chain.onnx", WEIGHTS]


def test_the_cache_needs_the_models_digest(origin: Origin, tmp_path: Path) -> None:
    run = run_runtime_cli(
        "fetch", f"{origin.url}/chain.onnx", str(tmp_path / "m.onnx"), "--cache", str(tmp_path)
    )
    assert run.returncode == 2
    assert "--cache needs --sha256" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_entry_holds_the_model_as_published(origin: Origin, tmp_path: Path) -> None:
    """An archive as fetched (its digest is the key); a directory with its manifest."""
    cache = tmp_path / "cache"
    assert _fetch(origin, "model.tar.gz", tmp_path / "a" / "m", cache).returncode == 0
    assert _fetch(origin, "tree/", tmp_path / "b" / "m", cache).returncode == 0
    archive = cache / _digest(origin, "model.tar.gz")
    assert [p.name for p in archive.iterdir()] == ["model.tar.gz"]
    directory = cache / _digest(origin, "tree/") / TREE
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["chain.onnx", WEIGHTS, facts.MANIFEST_FILE]
    )
    assert (cache / LOCKS / archive.name).exists()
    # What reaches the pod is the model's tree, without the manifest.
    assert sorted(p.name for p in (tmp_path / "b" / "m").iterdir()) == ["chain.onnx", WEIGHTS]
    assert sorted(p.name for p in (tmp_path / "a" / "m").iterdir()) == ["chain.onnx", WEIGHTS]


def _killed_midway(origin: Origin, name: str, destination: Path, *extra: str) -> None:
    """Start a real fetch of ``name`` from a server that stops halfway, kill it there."""
    before = origin.gets[f"/stall/{name}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "modelplane_runtime", "fetch", f"{origin.url}/stall/{name}",
         str(destination), "--sha256", _digest(origin, name), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while origin.gets[f"/stall/{name}"] == before and process.poll() is None:
            assert time.monotonic() < deadline, "the fetch never reached the server"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_what_a_killed_fetch_left_is_removed_by_the_next(origin: Origin, tmp_path: Path) -> None:
    """Beside the destination (an init container restarted after a kill adds one copy each
    time) and in the cache (where eviction does not count it), under the cache's lock."""
    pod = tmp_path / "pod"
    _killed_midway(origin, "chain.onnx", pod / "model.onnx")
    _killed_midway(origin, "chain.onnx", pod / "model.onnx")
    assert [p.name for p in pod.iterdir() if p.name.startswith(".model.onnx.")]
    done = run_runtime_cli(
        "fetch", f"{origin.url}/chain.onnx", str(pod / "model.onnx"), "--sha256",
        _digest(origin, "chain.onnx"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in pod.iterdir()) == ["model.onnx"]

    cache = tmp_path / "cache"

    def staged() -> list[str]:
        return [p.name for p in cache.iterdir() if p.name.startswith(STAGING)]

    # Its own leftovers, under its lock; then those of a model no filler holds.
    _killed_midway(origin, "chain.onnx", tmp_path / "a" / "model.onnx", "--cache", str(cache))
    assert len(staged()) == 1
    run = _fetch(origin, "chain.onnx", tmp_path / "a" / "model.onnx", cache)
    assert "cache miss" in run.stdout, run.stderr
    assert staged() == []
    _killed_midway(origin, "model.tar.gz", tmp_path / "b" / "model", "--cache", str(cache))
    assert len(staged()) == 1
    run = _fetch(origin, "chain.onnx", tmp_path / "c" / "model.onnx", cache)
    assert "cache hit" in run.stdout, run.stderr
    assert staged() == []
    assert sorted(p.name for p in cache.iterdir()) == [LOCKS, _digest(origin, "chain.onnx")]
    run = _fetch(origin, "model.tar.gz", tmp_path / "b" / "model", cache)
    assert "cache miss" in run.stdout, run.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model"]
