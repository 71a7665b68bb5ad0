"""Smoke-test an image archive without a container runtime; `make images` runs it per image.

The docker-archive is unpacked layer by layer (whiteouts applied) into a scratch directory;
commands then run in it through chroot, in a private mount namespace, as the image's user,
with the root filesystem read-only and tmpfs at the pods' scratch paths (/tmp and
/home/modelplane/.cache), as the operator's pods run the images. A broken image exits non-zero.

What it proves, besides the image's tag and its entrypoint's --help:
- runtime: a graph with a StringNormalizer node (it asks for en_US.UTF-8) loads through the
  runtime's own loader and answers, and fails to load with the locale archive masked (so the
  check means something); `serve` from the image's default command answers an OIP request
  on 127.0.0.1 and exits on SIGTERM; no torch, no compiler.
- every image: no compiler, no pip cache or apt lists, nothing of the host's CA bundle.

Sizes (archive, gzip of it, unpacked) and the results go into the manifest (images.json).
Standard library only: it runs with the host's python3, the project's venv is not needed.
"""

# ruff: noqa: T201 - a command-line tool: it reports by printing
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SCRATCH = ("/tmp", "/home/modelplane/.cache")  # noqa: S108 - the pods' emptyDirs (facts.SCRATCH_DIRS)
MODEL_DIR = "/mnt/models"
COMPILERS = re.compile(r"(^|-)(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|tcc)(-[0-9.]+)?$")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)

STRING_MODEL = """
import onnx
from onnx import TensorProto, helper
# No `locale` attribute: onnxruntime uses its default, en_US.UTF-8.
node = helper.make_node("StringNormalizer", ["text"], ["normalized"], case_change_action="LOWER")
graph = helper.make_graph(
    [node], "strings",
    [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
    [helper.make_tensor_value_info("normalized", TensorProto.STRING, [None])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, "/mnt/models/model.onnx")
"""

LOAD_MODEL = """
import numpy as np
from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.model import OnnxModel
model = OnnxModel.load(RuntimeSettings(model_path="/mnt/models/model.onnx"))
(out,) = model.session.run(None, {"text": np.array(["Hello World"], dtype=object)})
assert out.tolist() == ["hello world"], out
print("loaded on", model.provider, "->", out.tolist())
"""

NO_TORCH = """
import importlib.util, sys
found = [m for m in ("torch", "tensorflow") if importlib.util.find_spec(m)]
sys.exit(f"found {found}" if found else 0)
"""


class Failed(Exception):
    pass


# --- the archive ------------------------------------------------------------------------------


def _archive_manifest(archive: tarfile.TarFile) -> dict[str, Any]:
    member = archive.extractfile("manifest.json")
    assert member is not None
    (manifest,) = json.load(member)
    return dict(manifest)


def unpack(archive_path: Path, root: Path) -> tuple[list[str], dict[str, Any]]:
    """Unpack a docker-archive's layers in order into root; return its tags and its config."""
    with tarfile.open(archive_path) as archive:
        manifest = _archive_manifest(archive)
        config_file = archive.extractfile(manifest["Config"])
        assert config_file is not None
        config = json.load(config_file)
        for layer in manifest["Layers"]:
            _apply_layer(archive, layer, root)
    return list(manifest.get("RepoTags") or []), config


def _apply_layer(archive: tarfile.TarFile, name: str, root: Path) -> None:
    # Whiteouts first: they delete what the lower layers put there.
    with tarfile.open(fileobj=archive.extractfile(name)) as layer:
        for member in layer.getmembers():
            path = Path(member.name)
            if path.name == ".wh..wh..opq":
                directory = root / path.parent
                for child in directory.iterdir() if directory.is_dir() else ():
                    _remove(child)
            elif path.name.startswith(".wh."):
                _remove(root / path.parent / path.name[len(".wh.") :])
    stream = archive.extractfile(name)
    assert stream is not None
    head = stream.read(2)
    stream.seek(0)
    untar = ["tar", "-x", "-C", str(root), "--numeric-owner", "-p", "--exclude=.wh.*"]
    if head == b"\x1f\x8b":
        untar.append("-z")
    with subprocess.Popen(untar, stdin=subprocess.PIPE) as process:
        assert process.stdin is not None
        shutil.copyfileobj(stream, process.stdin, 1 << 20)
        process.stdin.close()
    if process.returncode:
        raise Failed(f"unpacking layer {name} failed")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


# --- running inside the unpacked image -----------------------------------------------------------

# Runs as root in a fresh mount namespace: mounts, then the root goes read-only, then chroot
# drops to the image's user. "$@" is the command; MASK_LOCALE hides the locale archive.
INSIDE = r"""
set -eu
root=$1; user=$2; workdir=$3; models=$4; models_mode=$5; shift 5
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,size=512m tmpfs "$root/tmp"
mount -t tmpfs -o "mode=0755,uid=${user%%:*},gid=${user##*:},size=512m" tmpfs \
  "$root/home/modelplane/.cache"
mount --bind "$models" "$root/mnt/models"
mount -o "remount,bind,$models_mode" "$root/mnt/models"
if [ -n "${MASK_LOCALE:-}" ]; then mount --bind /dev/null "$root/usr/lib/locale/locale-archive"; fi
mount -o remount,bind,ro "$root"
exec chroot --userspec="$user" --groups="${user##*:}" "$root" \
  /usr/bin/env -i -C "$workdir" "$@"
"""


class Image:
    def __init__(self, root: Path, config: dict[str, Any], models: Path) -> None:
        self.root = root
        self.config = config.get("config") or {}
        self.user = self.config.get("User") or "0:0"
        if ":" not in self.user:
            self.user = f"{self.user}:{self.user}"
        self.workdir = self.config.get("WorkingDir") or "/"
        self.env = list(self.config.get("Env") or [])
        self.entrypoint = list(self.config.get("Entrypoint") or [])
        self.cmd = list(self.config.get("Cmd") or [])
        self.models = models
        for mountpoint in ("proc", "dev", *(p.lstrip("/") for p in (*SCRATCH, MODEL_DIR))):
            (root / mountpoint).mkdir(parents=True, exist_ok=True)

    def command(
        self,
        argv: Sequence[str],
        env: Sequence[str] = (),
        models_writable: bool = False,
        mask_locale: bool = False,
    ) -> list[str]:
        mode = "rw" if models_writable else "ro"
        masking = ["env", "MASK_LOCALE=1"] if mask_locale else []
        return [
            *masking,
            *("unshare", "--mount", "--", "sh", "-c", INSIDE, "inside"),
            *(str(self.root), self.user, self.workdir, str(self.models), mode),
            *self.env,
            *env,
            *argv,
        ]

    def run(
        self, argv: Sequence[str], *, expect_ok: bool = True, **options: Any
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(argv, **options), capture_output=True, text=True, timeout=300, check=False
        )
        if expect_ok and done.returncode != 0:
            raise Failed(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done


# --- checks -------------------------------------------------------------------------------------


def _certificates(text: str) -> set[str]:
    return {"".join(body.split()) for body in PEM.findall(text)}


def _packaged_certificates(root: Path) -> set[str]:
    """The certificates Debian's (or Ubuntu's) ca-certificates package ships under root."""
    found: set[str] = set()
    for crt in root.glob("usr/share/ca-certificates/**/*.crt"):
        found |= _certificates(crt.read_text(errors="replace"))
    return found


def check_files(root: Path, image: str) -> list[str]:
    """What the image must not carry, read from its files."""
    passed = []
    compilers = [
        str(p.relative_to(root))
        for directory in ("usr/bin", "usr/local/bin", "opt/modelplane/bin")
        if (root / directory).is_dir()
        for p in (root / directory).iterdir()
        if COMPILERS.search(p.name)
    ]
    compilers += [str(p.relative_to(root)) for p in root.glob("usr/lib*/gcc/*/*/cc1*")]
    if compilers:
        raise Failed(f"{image} carries a compiler: {compilers}")
    passed.append("no compiler (gcc, cc, c++, clang, cc1)")
    torch = list(root.glob("opt/modelplane/lib/python3*/site-packages/torch"))
    if torch:
        raise Failed(f"{image} carries torch: {torch}")
    passed.append("no torch in the venv")
    leftovers = [
        str(p.relative_to(root))
        for pattern in (
            "root/.cache/*",
            "home/*/.cache/*",
            "var/lib/apt/lists/*_*",
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "etc/pip.conf",
            "opt/modelplane/lib/python3*/site-packages/pip",
        )
        for p in root.glob(pattern)
    ]
    if leftovers:
        raise Failed(f"{image} carries caches or build leftovers: {leftovers}")
    passed.append("no pip cache, no pip, no apt lists or archives")
    # The build mounts the host's CA bundle over the image's during RUN steps only. The image's
    # bundle must be what its ca-certificates package makes, and no certificate the host added
    # to its own (here: the TLS-intercepting proxy's) may be anywhere in the image.
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    packaged = _packaged_certificates(root)
    foreign = _certificates(bundle.read_text(errors="replace")) - packaged
    if foreign:
        raise Failed(f"{image}: {len(foreign)} certificates in its CA bundle are not Debian's")
    host_only = set()
    if HOST_CA_BUNDLE.exists():
        host_only = _certificates(HOST_CA_BUNDLE.read_text()) - packaged
        host_only -= _packaged_certificates(Path("/"))
    for path in root.rglob("*"):
        if path.suffix in {".pem", ".crt", ".cer"} and path.is_file() and not path.is_symlink():
            found = _certificates(path.read_text(errors="replace")) & host_only
            if found:
                raise Failed(f"{image}: {path.relative_to(root)} holds a certificate of the host's")
    passed.append(
        f"CA bundle is Debian's; none of the {len(host_only)} certificates the host added to its "
        "own is in the image"
    )
    return passed


def check_read_only(image: Image) -> str:
    probe = image.run(["sh", "-c", "touch /probe"], expect_ok=False)
    if probe.returncode == 0:
        raise Failed("the smoke test's root filesystem is not read-only")
    whoami = image.run(["id", "-u"]).stdout.strip()
    if whoami != image.user.split(":")[0] or whoami == "0":
        raise Failed(f"ran as uid {whoami}, not the image's user {image.user}")
    return f"runs as uid {whoami} on a read-only root (tmpfs at {', '.join(SCRATCH)})"


def check_runtime(image: Image) -> list[str]:
    passed = []
    helped = image.run([*image.entrypoint, "--help"])
    if "serve" not in helped.stdout:
        raise Failed(f"{image.entrypoint} --help does not list serve:\n{helped.stdout}")
    passed.append(f"{' '.join(image.entrypoint)} --help")
    image.run(["python", "-c", NO_TORCH])
    passed.append("torch is not importable")
    image.run(["python", "-c", STRING_MODEL], models_writable=True)
    loaded = image.run(["python", "-c", LOAD_MODEL])
    passed.append(f"StringNormalizer graph (en_US.UTF-8) {loaded.stdout.strip()}")
    masked = image.run(["python", "-c", LOAD_MODEL], expect_ok=False, mask_locale=True)
    if masked.returncode == 0 or "locale" not in masked.stderr:
        raise Failed(
            "the StringNormalizer graph loads without the locale archive: the check proves "
            f"nothing\n{masked.stderr[-2000:]}"
        )
    passed.append("the same graph fails to load with the locale archive masked (control)")
    passed.append(serve_once(image))
    return passed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a fixed http://127.0.0.1 URL
        url, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            text = answer.read()
            with contextlib.suppress(ValueError):
                return answer.status, json.loads(text)
            return answer.status, text.decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _answer_then_stop(
    server: subprocess.Popen[bytes], log: Any, base: str, started: float
) -> float:
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise Failed(f"serve exited {server.returncode}:\n{log.read()[-3000:]}")
        with contextlib.suppress(OSError):
            if _http(f"{base}/v2/health/ready")[0] == 200:
                break
        if time.monotonic() - started > 120:
            raise Failed("serve was not ready within 120 s")
        time.sleep(0.5)
    ready = time.monotonic() - started
    text = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hi There"]}
    status, answer = _http(f"{base}/v2/models/model/infer", {"inputs": [text]})
    if status != 200 or answer["outputs"][0]["data"] != ["hi there"]:
        raise Failed(f"infer answered {status}: {answer}")
    os.killpg(server.pid, signal.SIGTERM)
    code = server.wait(timeout=60)
    if code != 0:
        log.seek(0)
        raise Failed(f"serve exited {code} on SIGTERM:\n{log.read()[-3000:]}")
    return ready


def serve_once(image: Image) -> str:
    """The image's default command, configured as a pod would be, answers one request."""
    port = _free_port()
    env = [f"MODELPLANE_MODEL_PATH={MODEL_DIR}/model.onnx", f"MODELPLANE_PORT={port}"]
    argv = [*image.entrypoint, *image.cmd]
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(
            image.command(argv, env=env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready = _answer_then_stop(server, log, f"http://127.0.0.1:{port}", started)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    return (
        f"`{' '.join(argv)}` (the image's command) ready in {ready:.1f} s, answered an OIP "
        "infer request, exited 0 on SIGTERM"
    )


def check_operator(image: Image) -> list[str]:
    helped = image.run([*image.entrypoint, "--help"])
    if "run" not in helped.stdout:
        raise Failed(f"{image.entrypoint} --help does not list run:\n{helped.stdout}")
    image.run(["python", "-c", "import modelplane_operator.handlers"])
    image.run(["python", "-c", NO_TORCH])
    return [f"{' '.join(image.entrypoint)} --help", "modelplane_operator.handlers imports"]


# --- the manifest -------------------------------------------------------------------------------


def _size(root: Path) -> int:
    done = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def _gzip_size(path: Path) -> int:
    """What `gzip -6` makes of the archive: about what a registry would serve of its layers."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


def _load(manifest: Path) -> dict[str, Any]:
    if manifest.exists():
        return dict(json.loads(manifest.read_text()))
    return {"images": []}


def _save(manifest: Path, data: dict[str, Any]) -> None:
    partial = manifest.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(manifest)


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="smoke-", dir=parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest)
    data = _load(manifest)
    entries = [e for e in data["images"] if e["name"] != args.name]
    previous: dict[str, Any] = next((e for e in data["images"] if e["name"] == args.name), {})
    archive = Path(args.archive)
    stat = archive.stat()
    entry: dict[str, Any] = {
        "name": args.name,
        "image": args.image,
        "archive": str(archive),
        "format": "docker-archive",
        "archive_bytes": stat.st_size,
        "build_seconds": args.build_seconds or previous.get("build_seconds"),
        "import": f"ctr -n k8s.io images import {archive}",
    }
    same_archive = (previous.get("archive_bytes"), previous.get("archive_mtime")) == (
        stat.st_size,
        int(stat.st_mtime),
    )
    entry["archive_mtime"] = int(stat.st_mtime)
    entry["gzip_bytes"] = previous["gzip_bytes"] if same_archive else _gzip_size(archive)
    started = time.monotonic()
    try:
        with _scratch(manifest.parent) as scratch:
            root, models = scratch / "root", scratch / "models"
            root.mkdir()
            models.mkdir(mode=0o777)
            models.chmod(0o777)
            tags, config = unpack(archive, root)
            if tags != [args.image]:
                raise Failed(f"{archive} is tagged {tags}, not [{args.image}]")
            entry["unpacked_bytes"] = _size(root)
            passed = [f"tagged {args.image}", *check_files(root, args.image)]
            image = Image(root, config, models)
            passed.append(check_read_only(image))
            passed += check_runtime(image) if args.kind == "runtime" else check_operator(image)
    except Failed as failure:
        entry["smoke"] = f"FAILED: {failure}"
        _save(manifest, {**data, "images": sorted([*entries, entry], key=lambda e: e["name"])})
        print(f"smoke test of {args.image} FAILED:\n{failure}", file=sys.stderr)
        return 1
    entry["smoke"] = "passed"
    entry["smoke_seconds"] = round(time.monotonic() - started, 1)
    entry["checks"] = passed
    _save(manifest, {**data, "images": sorted([*entries, entry], key=lambda e: e["name"])})
    print(f"smoke test of {args.image}: passed ({entry['smoke_seconds']} s)")
    for line in passed:
        print(f"  ok  {line}")
    return 0


def summary(args: argparse.Namespace) -> int:
    data = _load(Path(args.manifest))
    mib = 1024 * 1024
    print(f"{'image':36} {'archive':>9} {'gzip':>9} {'unpacked':>9} {'build':>7}  smoke")
    for e in data["images"]:
        build = f"{e['build_seconds']} s" if e.get("build_seconds") else "-"
        print(
            f"{e['image']:36} {e['archive_bytes'] / mib:7.0f} M {e['gzip_bytes'] / mib:7.0f} M "
            f"{e.get('unpacked_bytes', 0) / mib:7.0f} M {build:>7}  {e['smoke'][:60]}"
        )
        print(f"  {e['archive']}")
    print(f"manifest: {args.manifest}")
    return 0 if all(e["smoke"] == "passed" for e in data["images"]) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True)
    one = commands.add_parser("check", help="unpack one archive, check it, record it")
    one.add_argument("--manifest", required=True)
    one.add_argument("--kind", choices=["runtime", "operator"], required=True)
    one.add_argument("--name", required=True)
    one.add_argument("--image", required=True, help="the reference the archive must carry")
    one.add_argument("--archive", required=True)
    one.add_argument("--build-seconds", type=int, default=None)
    one.set_defaults(handler=check)
    every = commands.add_parser("summary", help="print the sizes in the manifest")
    every.add_argument("--manifest", required=True)
    every.set_defaults(handler=summary)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
