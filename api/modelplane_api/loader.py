"""ModelDeployments from YAML files, every problem reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelplane_api.cli import UsageError
from modelplane_api.spec import InvalidSpecError, ModelDeployment, parse_model_deployment


def load_model_deployments(path: Path) -> list[ModelDeployment]:
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
