"""The structure holds: operator -> modelplane_api <- runtime, no import cycles, every
cross-process fact defined once, and one registry of child kinds behind everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modelplane_api import facts
from modelplane_operator import kinds
from modelplane_operator.render import RENDERERS
from modelplane_testkit import helm

REPO = Path(__file__).resolve().parents[1]
ROOTS = {
    "modelplane_api": "api",
    "modelplane_operator": "operator",
    "modelplane_runtime": "runtime",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted((REPO / root / package).rglob("*.py")):
            parts = path.relative_to(REPO / root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Product modules this one imports, at module level or inside functions."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                imported.add(submodule if submodule in MODULES else node.module)
    return {name for name in imported if name in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("modelplane_api", {"modelplane_operator", "modelplane_runtime"}),
        ("modelplane_operator", {"modelplane_runtime"}),
        ("modelplane_runtime", {"modelplane_operator"}),
    ],
)
def test_dependencies_point_one_way(importer: str, forbidden: set[str]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _package(module) == importer
        for target in targets
        if _package(target) in forbidden
    )
    assert wrong == []


def test_no_import_cycle_among_product_modules() -> None:
    """Function-level imports count: hiding a cycle in a function is still a cycle."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH[module]):
            if target != module and not module.startswith(target + "."):
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_checks_can_fail() -> None:
    assert "modelplane_api.facts" in GRAPH["modelplane_operator.render"]
    assert "modelplane_api.facts" in GRAPH["modelplane_runtime.service"]


# Each fact's literal, and the only module that may spell it.
FACTS = {
    repr(facts.PENDING_REQUESTS_METRIC): "modelplane_api/facts.py",
    repr(facts.LIVE_PATH): "modelplane_api/facts.py",
    repr(facts.READY_PATH): "modelplane_api/facts.py",
    repr(facts.MODEL_DIR): "modelplane_api/facts.py",
    repr(facts.FETCHED_MODEL_FILE): "modelplane_api/facts.py",
    repr(facts.SHA256_PATTERN).lstrip("'").rstrip("'"): "modelplane_api/facts.py",
    str(facts.HTTP_PORT): "modelplane_api/facts.py",
    str(facts.RUNTIME_UID): "modelplane_api/facts.py",
    "64 * 1024 * 1024": "modelplane_api/facts.py",
}


@pytest.mark.parametrize(("literal", "owner"), FACTS.items(), ids=list(FACTS))
def test_each_cross_process_fact_is_written_once(literal: str, owner: str) -> None:
    spelled = sorted(
        str(path.relative_to(REPO))
        for path in MODULES.values()
        if literal.replace('"', "'") in path.read_text().replace('"', "'")
    )
    assert spelled == [f"api/{owner}"], spelled


def test_every_registered_child_kind_has_a_renderer_and_apply_order() -> None:
    assert list(RENDERERS) == list(kinds.CHILDREN)
    assert len({k.index for k in kinds.BY_KIND.values()}) == len(kinds.BY_KIND)
    assert kinds.CHILDREN[0] is kinds.DEPLOYMENT, "a refused pod template must create nothing"


def test_the_charts_rbac_is_what_the_registry_needs() -> None:
    (rules,) = [o["rules"] for o in helm.template() if o["kind"] == "ClusterRole"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for resource, verbs in kinds.verbs_by_resource().items():
        assert granted.get(resource) == verbs, resource
