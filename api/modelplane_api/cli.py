"""The command line: one parser, one usage-error convention, commands from both sides.

``modelplane`` composes the commands registered under the ``modelplane.commands``
entry points (render from the operator; serve, fetch and export from the
runtime); ``python -m modelplane_runtime`` runs the runtime's alone, as the
images do. Either way: a bad argument is one line on stderr and exit status 2;
an expected failure is its message on stderr and exit status 1; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

COMMANDS_GROUP = "modelplane.commands"
DESCRIPTION = (
    "modelplane: ONNX models as a service on Kubernetes. Render what the operator applies,"
    " serve a model locally or in a pod, fetch and export models."
)


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit status 2."""


class CommandFailed(Exception):
    """An expected failure (an invalid spec, a fetch that did not verify): exit status 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


class HELP_FORMAT(argparse.HelpFormatter):  # noqa: N801 - used like argparse's constants
    """--help shows each option's default after its text, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


Registrar = Callable[["argparse._SubParsersAction[Parser]"], None]


def run(argv: Sequence[str] | None, *, prog: str, registrars: Iterable[Registrar]) -> int:
    parser = Parser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for register in registrars:
        register(commands)
    try:
        args = parser.parse_args(argv)
        status: int = args.handler(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 2
    except CommandFailed as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)  # noqa: T201
        return 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``modelplane``: every registered command."""
    found = sorted(entry_points(group=COMMANDS_GROUP), key=lambda point: point.name)
    return run(argv, prog="modelplane", registrars=[point.load() for point in found])


if __name__ == "__main__":
    raise SystemExit(main())
