"""``python -m modelplane_runtime``: serve, fetch and export.

The same commands are reachable as ``modelplane serve|fetch|export`` (see
modelplane_api.cli, which also owns the usage-error convention).
In a pod, ``serve`` with no arguments reads every setting from MODELPLANE_*.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from modelplane_api import facts
from modelplane_api.cli import (
    HELP_FORMAT,
    CommandFailed,
    Parser,
    UsageError,
    port_number,
    run,
)
from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.download import Patience
from modelplane_runtime.errors import ServingError


def _serve(args: argparse.Namespace) -> int:
    from modelplane_runtime.local import settings_for_local_serving
    from modelplane_runtime.server import serve

    if args.model is None and args.file is None:
        settings = RuntimeSettings()  # in a pod: everything from the environment
    else:
        settings = settings_for_local_serving(
            model=args.model,
            manifest=args.file,
            name=args.name,
            host=args.host,
            port=args.port,
            allow_cpu_fallback=args.allow_cpu_fallback,
            access=args.access,
            graph=args.graph,
        )
    if args.grpc_port is not None:
        settings = settings.model_copy(update={"grpc_port": args.grpc_port})
    serve(settings)
    return 0


def _new_key(args: argparse.Namespace) -> int:
    from modelplane_api.access import key_digest, new_key

    key = new_key()
    print(f"key     {key}")
    print(f"sha256  {key_digest(key)}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from modelplane_runtime.errors import FetchStalled
    from modelplane_runtime.logs import configure_logging, write_termination_message

    configure_logging()  # the fetch's progress, in the init container's log
    try:
        return _fetch_model(args)
    except FetchStalled as exc:
        # The status says so (FetchStalled now, Retrying while the kubelet runs it again).
        write_termination_message(
            _termination_message_path(), f"{facts.FETCH_STALLED}: {exc.message}"
        )
        raise


def _termination_message_path() -> Path:
    """The kubelet's file in a pod; a test names another (the variable `serve` reads too)."""
    return Path(
        os.environ.get("MODELPLANE_TERMINATION_MESSAGE_PATH", facts.TERMINATION_MESSAGE_PATH)
    )


def _patience(args: argparse.Namespace) -> Patience:
    return Patience(
        stall_seconds=args.stall_seconds,
        budget_seconds=args.budget_seconds,
        attempts=args.attempts,
    )


def _fetch_model(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from modelplane_runtime.archives import is_archive
    from modelplane_runtime.fetch import fetch, fetch_tree

    tree = args.uri.endswith("/") or is_archive(urlsplit(args.uri).path)
    if args.cache is not None:
        return _fetch_cached(args, tree=tree)
    if tree:
        digest = fetch_tree(
            args.uri,
            Path(args.destination),
            sha256=args.sha256,
            max_bytes=args.max_bytes,
            max_files=args.max_files,
            max_ratio=args.max_ratio,
            patience=_patience(args),
        )
        checked = f"sha256 {digest}" if digest else "no sha256 given: not verified"
        print(f"fetched {args.uri} -> {args.destination}/ ({checked})")
        return 0
    digest = fetch(
        args.uri,
        Path(args.destination),
        sha256=args.sha256,
        max_bytes=args.max_bytes,
        patience=_patience(args),
    )
    print(f"fetched {args.uri} -> {args.destination} (sha256 {digest})")
    return 0


def _fetch_cached(args: argparse.Namespace, *, tree: bool) -> int:
    from urllib.parse import urlsplit

    from modelplane_runtime.archives import extract, is_archive
    from modelplane_runtime.fetch import fetch, fetch_tree
    from modelplane_runtime.logs import write_termination_message
    from modelplane_runtime.model_cache import Archive, Form, fetch_through_cache

    if args.sha256 is None:
        raise UsageError("--cache needs --sha256: the cache is keyed by the model's digest")

    # The cache keeps the model as published, so that its digest proves an entry: a file
    # or an archive as fetched, a directory with its manifest.
    form: Form = "file"
    if is_archive(urlsplit(args.uri).path):

        def unpack(archive: Path, into: Path) -> None:
            into.mkdir()
            extract(
                archive,
                into,
                max_bytes=args.max_bytes,
                max_files=args.max_files,
                max_ratio=args.max_ratio,
            )

        form = Archive(Path(urlsplit(args.uri).path).name, unpack)
    elif tree:
        form = "directory"

    def fill(target: Path) -> None:
        if form == "directory":
            fetch_tree(
                args.uri,
                target,
                sha256=args.sha256,
                max_bytes=args.max_bytes,
                max_files=args.max_files,
                patience=_patience(args),
                keep_manifest=True,
            )
        else:
            fetch(
                args.uri,
                target,
                sha256=args.sha256,
                max_bytes=args.max_bytes,
                patience=_patience(args),
            )

    outcome = fetch_through_cache(
        Path(args.cache),
        args.sha256,
        Path(args.destination),
        fill,
        form=form,
        max_bytes=args.cache_max_bytes,
    )
    print(f"fetched {args.uri} -> {args.destination} (sha256 {args.sha256}, cache {outcome})")
    write_termination_message(_termination_message_path(), facts.MODEL_CACHE_REPORT + outcome)
    return 0


def _export(args: argparse.Namespace) -> int:
    from modelplane_runtime.export import export_from_cli

    return export_from_cli(args)


def add_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model over the Open Inference Protocol",
        description="Serve one ONNX model over the Open Inference Protocol (KServe V2), REST and"
        " gRPC."
        " With neither --model nor -f, every setting comes from MODELPLANE_* variables (in a pod)."
        " Settings the flags do not name (limits, timeouts, batching) come from MODELPLANE_*"
        " variables; see the README's Limits section.",
        formatter_class=HELP_FORMAT,
    )
    source = serve.add_mutually_exclusive_group()
    source.add_argument(
        "--model", metavar="PATH", help="an .onnx file, or a directory holding one with its weights"
    )
    source.add_argument(
        "-f", "--file", metavar="YAML", help="a ModelDeployment manifest to serve as its pod would"
    )
    serve.add_argument(
        "--name", help="the model's name in URLs (default: the file's stem, or metadata.name)"
    )
    serve.add_argument(
        "--graph", help="with a --model directory: its graph file (default: its only .onnx)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=port_number, default=facts.HTTP_PORT, help="port to listen on"
    )
    serve.add_argument(
        "--grpc-port",
        type=_port_or_off,
        help="port for the Open Inference Protocol over gRPC, 0 for none (default:"
        f" MODELPLANE_GRPC_PORT, else {facts.GRPC_PORT})",
    )
    serve.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="serve a GPU ModelDeployment on this machine's CPU",
    )
    serve.add_argument(
        "--access",
        metavar="JSON",
        help="serve only the consumers this access file names (key digests, grants, limits;"
        " see the README's Access section); none: open to anyone",
    )
    serve.set_defaults(handler=_failing_as_commands(_serve))

    key = commands.add_parser(
        "new-key",
        help="print a new consumer key and the digest an access file lists",
        description="Print a new random consumer key (256 bits) and its SHA-256 digest, the"
        " form an access file holds. The key itself is shown once and stored nowhere.",
        formatter_class=HELP_FORMAT,
    )
    key.set_defaults(handler=_new_key)

    fetch = commands.add_parser(
        "fetch",
        help="copy a model URI to a local file, atomically",
        description="Copy a model to a local file; with --sha256 a mismatch writes nothing.",
        formatter_class=HELP_FORMAT,
    )
    fetch.add_argument(
        "uri",
        help="file://, http(s)://, s3:// or gs:// URI: one file, a directory (ending in /)"
        " or an archive (.tar, .tar.gz, .tgz, .zip)",
    )
    fetch.add_argument("destination", help="local path to write (a directory for the last two)")
    fetch.add_argument(
        "--sha256",
        help="expected sha256 (64 hex digits) of the file or archive, or of a directory's"
        f" {facts.MANIFEST_FILE} manifest; none: not checked",
    )
    fetch.add_argument(
        "--max-bytes",
        type=int,
        default=facts.MAX_MODEL_BYTES,
        help="most bytes the fetch may write (a file; a directory; an archive and what it"
        " unpacks to, together): in a pod, the model volume's sizeLimit",
    )
    fetch.add_argument(
        "--max-files",
        type=int,
        default=facts.MAX_MODEL_FILES,
        help="most files and directories a directory or archive may hold",
    )
    fetch.add_argument(
        "--max-ratio",
        type=float,
        default=facts.MAX_COMPRESSION_RATIO,
        help="most an archive may unpack to, in multiples of its own size",
    )
    fetch.add_argument(
        "--stall-seconds",
        type=float,
        default=facts.FETCH_STALL_SECONDS,
        help="an http(s) attempt that receives no byte for this long fails, and is retried",
    )
    fetch.add_argument(
        "--budget-seconds",
        type=float,
        default=facts.FETCH_BUDGET_SECONDS,
        help="the longest an http(s) fetch may take, retries included",
    )
    fetch.add_argument(
        "--attempts",
        type=int,
        default=facts.FETCH_ATTEMPTS,
        help="give up after this many attempts in a row that fetched nothing"
        " (refused, reset, stalled, 408, 429, 5xx)",
    )
    fetch.add_argument(
        "--cache",
        metavar="DIR",
        help="a model cache shared by replicas (needs --sha256): a good copy there is used"
        " instead of downloading; a miss fills it",
    )
    fetch.add_argument(
        "--cache-max-bytes",
        type=int,
        metavar="N",
        help="evict the least recently used models to keep the cache under N bytes",
    )
    fetch.set_defaults(handler=_failing_as_commands(_fetch))

    export = commands.add_parser(
        "export",
        help="export a torch module to ONNX and check it against torch",
        description="Export a torch module to ONNX (batch axis dynamic) and compare the"
        " exported model's outputs with torch's on random inputs.",
        formatter_class=HELP_FORMAT,
    )
    export.add_argument("target", help="module:callable returning a torch.nn.Module")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument(
        "--input-shape", required=True, help="one input's shape, batch axis first, e.g. 1,3,224,224"
    )
    export.add_argument("--dtype", default="float32", help="the input's dtype")
    export.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest accepted max-abs difference to torch"
    )
    export.add_argument("--opset", type=int, default=18, help="ONNX opset to export to")
    export.set_defaults(handler=_failing_as_commands(_export))


def _port_or_off(text: str) -> int:
    """An argparse type: a TCP port, or 0 for none."""
    return 0 if text == "0" else port_number(text)


def _failing_as_commands(handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """The runtime's own errors, at the command-line boundary: one line, exit status 1."""

    def command(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ServingError as exc:
            raise CommandFailed(f"error: {exc}") from None

    return command


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, prog="python -m modelplane_runtime", registrars=[add_commands])
