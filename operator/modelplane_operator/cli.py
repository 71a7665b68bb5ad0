"""``modelplane render -f FILE``: exactly the objects the operator applies for the
ModelDeployments in FILE (owner references are added at apply time)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelplane_api.cli import HELP_FORMAT, CommandFailed, Parser
from modelplane_api.loader import load_model_deployments
from modelplane_api.spec import InvalidSpecError
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import Unrenderable, render_children
from modelplane_operator.yaml_text import dump_all


def _render(args: argparse.Namespace) -> int:
    config = OperatorConfig()
    try:
        deployments = load_model_deployments(Path(args.file))
    except InvalidSpecError as exc:
        raise CommandFailed(*exc.problems) from None
    objects = []
    for md in deployments:
        try:
            objects += render_children(md, config)
        except Unrenderable as exc:
            raise CommandFailed(f"{md.namespace}/{md.name}: {exc}") from None
    sys.stdout.write(dump_all(objects))
    return 0


def add_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    render = commands.add_parser(
        "render",
        help="print the Kubernetes objects the operator applies for a ModelDeployment",
        description="Print, as YAML, every object the operator would apply for the"
        " ModelDeployments in a file: the same renderers, no cluster needed.",
        formatter_class=HELP_FORMAT,
    )
    render.add_argument("-f", "--file", required=True, help="ModelDeployment YAML (may hold many)")
    render.set_defaults(handler=_render)
