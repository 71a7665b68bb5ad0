"""``python -m modelplane_runtime``: serve, fetch and export.

The same commands are reachable as ``modelplane serve|fetch|export``.
In a pod, ``serve`` with no arguments reads every setting from MODELPLANE_*.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from modelplane_runtime.errors import UsageError
from modelplane_runtime.settings import RuntimeSettings


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


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
        )
    serve(settings)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from modelplane_runtime.fetch import fetch

    digest = fetch(args.uri, Path(args.destination), sha256=args.sha256)
    print(f"fetched {args.uri} -> {args.destination} (sha256 {digest})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from modelplane_runtime.export import export_from_cli

    return export_from_cli(args)


def add_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    serve = commands.add_parser("serve", help="serve a model over the Open Inference Protocol")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--model", help="an .onnx file to serve")
    source.add_argument("-f", "--file", help="a ModelDeployment YAML to serve locally")
    serve.add_argument("--name", help="model name in URLs (default: file stem or metadata.name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="serve a GPU ModelDeployment on this machine's CPU",
    )
    serve.set_defaults(handler=_serve)

    fetch = commands.add_parser("fetch", help="copy a model URI to a local file, atomically")
    fetch.add_argument("uri", help="file://, http(s)://, s3:// or gs:// URI")
    fetch.add_argument("destination", help="local path to write")
    fetch.add_argument("--sha256", help="expected sha256; a mismatch writes nothing")
    fetch.set_defaults(handler=_fetch)

    export = commands.add_parser(
        "export", help="export a torch module to ONNX and check it against torch"
    )
    export.add_argument("target", help="module:callable returning a torch.nn.Module")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument(
        "--input-shape", required=True, help="one input's shape, batch axis first, e.g. 1,3,224,224"
    )
    export.add_argument("--dtype", default="float32", help="input dtype (default float32)")
    export.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest accepted max-abs difference to torch"
    )
    export.add_argument("--opset", type=int, default=18)
    export.set_defaults(handler=_export)


def build_parser() -> Parser:
    parser = Parser(prog="python -m modelplane_runtime", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; expected failures become one line on stderr."""
    from modelplane_runtime.errors import ServingError

    try:
        status: int = args.handler(args)
    except (UsageError, ServingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run(args)
