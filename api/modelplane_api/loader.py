"""ModelDeployments from YAML files, every problem reported at once.

A file is read as hostile input: its size, its nesting and what its aliases expand
to are bounded before anything walks it (a 614-byte file of nested anchors expands
to billions of nodes). A path that cannot be read is a bad argument (exit 2); a file
whose content is bad is one line and exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelplane_api.cli import CommandFailed, UsageError
from modelplane_api.spec import InvalidSpecError, ModelDeployment, parse_model_deployment

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
# Like the API server's YAML decoder, what aliases may expand to is bounded: here by
# nodes, counting an anchored subtree once for each alias that repeats it.
MAX_EXPANDED_NODES = 100_000


class _Refused(yaml.YAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing deep nesting and alias expansion beyond a budget."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node is not None:
                self._count(self._size(node))
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _Refused(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1)
        return node

    def _count(self, nodes: int) -> None:
        self._expanded += nodes
        if self._expanded > MAX_EXPANDED_NODES:
            raise _Refused(
                f"its aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                "(a YAML bomb?); write the repeated parts out"
            )

    def _size(self, node: yaml.Node) -> int:
        """Nodes under ``node`` once every alias in it is expanded (memoised: aliases
        share node objects, so this never expands anything)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        self._sizes[id(node)] = size
        if size > MAX_EXPANDED_NODES:
            self._count(size)
        return size


def _documents(path: Path) -> list[Any]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CommandFailed(f"{path}: larger than {MAX_FILE_BYTES} bytes; not read")
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandFailed(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        loader = _BoundedLoader(text)
        try:
            documents: list[Any] = []
            while loader.check_data():  # type: ignore[no-untyped-call]
                documents.append(loader.get_data())
        finally:
            loader.dispose()
    except _Refused as exc:
        raise CommandFailed(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise CommandFailed(
            f"{path}:{line} not valid YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None
    except RecursionError:
        raise CommandFailed(f"{path}: nested too deeply to read") from None
    return [d for d in documents if d is not None]


def load_model_deployments(path: Path) -> list[ModelDeployment]:
    documents = _documents(path)
    if not documents:
        raise CommandFailed(f"{path}: no ModelDeployment in the file")
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
