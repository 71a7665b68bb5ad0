"""operator/ must never shadow the standard library's `operator` module."""

import subprocess
import sys
from pathlib import Path

import modelplane_operator
import modelplane_runtime

REPO = Path(__file__).resolve().parents[1]


def test_source_roots_have_no_init_file() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "runtime" / "__init__.py").exists()


def test_import_operator_from_repo_root_is_the_stdlib() -> None:
    code = (
        "import operator, sys, sysconfig;"
        "assert operator.attrgetter, operator;"
        "assert operator.__file__.startswith(sysconfig.get_paths()['stdlib']), operator.__file__;"
        "import modelplane_operator, modelplane_runtime;"
        "print(operator.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "site-packages" not in result.stdout


def test_both_packages_come_from_their_source_roots() -> None:
    assert Path(modelplane_operator.__file__).parent == REPO / "operator" / "modelplane_operator"
    assert Path(modelplane_runtime.__file__).parent == REPO / "runtime" / "modelplane_runtime"
