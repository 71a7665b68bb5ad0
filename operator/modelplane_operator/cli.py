"""``modelplane``: the command-line entry point.

``modelplane render -f FILE`` prints exactly the objects the operator applies
for the ModelDeployments in FILE (owner references are added at apply time).
``modelplane serve|fetch|export`` are the runtime's tools (see modelplane_runtime.cli).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children
from modelplane_operator.spec import InvalidSpecError, ModelDeployment, parse_model_deployment
from modelplane_operator.yaml_text import dump_all
from modelplane_runtime import cli as runtime_cli
from modelplane_runtime.cli import Parser
from modelplane_runtime.errors import UsageError


def load_model_deployments(path: Path) -> list[ModelDeployment]:
    """Every ModelDeployment in a YAML file; all problems reported at once."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        documents: list[Any] = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise UsageError(f"{path}:{line} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not documents:
        raise UsageError(f"{path}: no ModelDeployment in the file")
    parsed: list[ModelDeployment] = []
    problems: list[str] = []
    for index, document in enumerate(documents, start=1):
        label = f"{path} (document {index})"
        if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
            label = f"{path} ({document['metadata'].get('name', f'document {index}')})"
        try:
            parsed.append(parse_model_deployment(document))
        except InvalidSpecError as exc:
            problems += [f"{label}: {problem}" for problem in exc.problems]
    if problems:
        raise InvalidSpecError(problems)
    return parsed


def _render(args: argparse.Namespace) -> int:
    config = OperatorConfig()
    objects = [
        obj for md in load_model_deployments(Path(args.file)) for obj in render_children(md, config)
    ]
    sys.stdout.write(dump_all(objects))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="modelplane", description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    render = commands.add_parser(
        "render", help="print the Kubernetes objects the operator applies for a ModelDeployment"
    )
    render.add_argument("-f", "--file", required=True, help="ModelDeployment YAML (may hold many)")
    render.set_defaults(handler=_render)
    # serve, fetch, export: the runtime's commands, with its error handling (runtime_cli.run).
    runtime_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command != "render":
            return runtime_cli.run(args)
        status: int = args.handler(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 2
    except InvalidSpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)  # noqa: T201
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
